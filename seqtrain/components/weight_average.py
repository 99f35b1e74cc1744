"""An exponential moving average (EMA) of the model's weights, for `--ema-decay`.

After every optimizer step the average moves towards the live weights:
`average = d * average + (1 - d) * weights`, with `d = min(decay, (1 + n) / (10 + n))` after n
updates, so that early on, when the average would mostly remember the random initialisation,
it follows the weights closely (the warm-up timm's and TensorFlow's EMAs use). BatchNorm's
running statistics are averaged the same way; integer buffers (batches tracked) are copied.

The average is a complete state dict of the bare model. A checkpoint stores it as
`weight_average.safetensors` beside the live weights (which resume needs); validation, the
test of the best checkpoint and the export then use the average, so `seqtrain evaluate`,
`predict` and `export` of such a run see what the trainer scored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from seqtrain.common.atomic import atomic_write_bytes
from seqtrain.models.state import prefix_free

AVERAGE_NAME = "weight_average.safetensors"
UPDATES_KEY = "updates"  # safetensors metadata: how many steps the average has seen


def bare_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with the key names of the bare model (no DDP/compile prefix)."""
    return prefix_free(model.state_dict())


class WeightAverage:
    """The running average of one model's state; identical on every rank, since every rank
    applies the same optimizer steps to the same weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in bare_state(model).items()}

    def restart(self, model: nn.Module) -> None:
        """Start over from `model`'s current state, as a new average would."""
        for key, value in bare_state(model).items():
            self.state[key].copy_(value)
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards `model`'s current state."""
        live = bare_state(model)
        weight = 1.0 - self.current_decay()
        averaged = [k for k, v in self.state.items() if v.is_floating_point()]
        torch._foreach_lerp_(
            [self.state[k] for k in averaged], [live[k].detach() for k in averaged], weight
        )
        for key, value in self.state.items():
            if not value.is_floating_point():
                value.copy_(live[key])
        self.updates += 1

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """`model` holding the average inside the block, its own weights again after."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # `model` may be compiled: its keys are the average's behind a prefix.
        bare_keys = dict(zip(live, prefix_free(live), strict=True))
        model.load_state_dict({key: self.state[bare] for key, bare in bare_keys.items()})
        try:
            yield model
        finally:
            model.load_state_dict(live)

    def save(self, folder: Path) -> None:
        """Write the average into (checkpoint) `folder` as safetensors, atomically."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.state.items()}
        data = safetensors_bytes(state, metadata={UPDATES_KEY: str(self.updates)})
        atomic_write_bytes(folder / AVERAGE_NAME, data)

    def load(self, folder: Path, model: nn.Module) -> None:
        """Restore the average a checkpoint `folder` holds; one that holds none (trained
        without `--ema-decay`) restarts the average from `model`, the checkpoint's weights."""
        path = folder / AVERAGE_NAME
        if not path.is_file():
            self.restart(model)
            return
        with safe_open(str(path), framework="pt") as f:
            self.updates = int((f.metadata() or {}).get(UPDATES_KEY, 0))
        for key, value in load_file(path, device="cpu").items():
            self.state[key].copy_(value)
