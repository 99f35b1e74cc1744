"""An exponential moving average (EMA) of the model's weights, for `--ema-decay`.

After every optimizer step the average moves towards the live weights:
`average = d * average + (1 - d) * weights`, with `d = min(decay, (1 + n) / (10 + n))` after n
updates, so that early on, when the average would mostly remember the random initialisation,
it follows the weights closely (the warm-up timm's and TensorFlow's EMAs use). BatchNorm's
running statistics are averaged the same way; integer buffers (batches tracked) are copied.

The update is device work only, the same at every step: the decay comes from a device count of
the updates (no Python float per step, which a captured step would freeze), and the tensor lists
it reads and writes are built once (the model's parameters and buffers keep their storage:
optimizer steps, BatchNorm and checkpoint loads all write in place).

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
        self.updates = 0  # host count, saved with the average
        live = {k: v.detach() for k, v in bare_state(model).items()}
        self.state = {k: v.clone() for k, v in live.items()}
        first = next(iter(live.values()))
        self._updates = torch.zeros((), dtype=torch.float32, device=first.device)  # device count
        floats = [k for k, v in live.items() if v.is_floating_point()]
        others = [k for k in live if k not in floats]
        self._averaged = ([self.state[k] for k in floats], [live[k] for k in floats])
        self._copied = ([self.state[k] for k in others], [live[k] for k in others])

    def restart(self, model: nn.Module) -> None:
        """Start over from `model`'s current state, as a new average would."""
        for key, value in bare_state(model).items():
            self.state[key].copy_(value)
        self._set_updates(0)

    def _set_updates(self, updates: int) -> None:
        self.updates = updates
        self._updates.fill_(updates)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def update(self) -> None:
        """One step of the average towards the model's current state (the model it was built
        from): `update_on_device` and `count`."""
        self.update_on_device()
        self.count()

    @torch.no_grad()
    def update_on_device(self) -> None:
        """The device work of one update (capturable: fixed tensors, no host value)."""
        n = self._updates
        weight = 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=self.decay)
        averages, live = self._averaged
        steps = torch._foreach_sub(live, averages)  # lerp by a tensor weight, as foreach ops
        torch._foreach_mul_(steps, weight)
        torch._foreach_add_(averages, steps)
        if self._copied[0]:
            torch._foreach_copy_(*self._copied)
        n.add_(1)

    def count(self) -> None:
        """The host's count of one update (`updates`, saved with the average)."""
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
            self._set_updates(int((f.metadata() or {}).get(UPDATES_KEY, 0)))
        for key, value in load_file(path, device="cpu").items():
            self.state[key].copy_(value)
