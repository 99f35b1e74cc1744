"""Training steps built in-process for tests: a `TrainStep` with its schedule on synthetic batches,
a plain-torch copy of the step as it was before device hyperparameters (the parity reference),
and a census of the operations that make a CUDA device wait for the host."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from torch.utils._python_dispatch import TorchDispatchMode

from seqtrain.components.capture import StepMode
from seqtrain.components.grad_clip import GradClip
from seqtrain.components.metrics import sequence_loss
from seqtrain.components.schedules import LRSchedule, one_cycle
from seqtrain.components.weight_average import WeightAverage
from seqtrain.config import ModelConfig, OptimConfig, RunConfig, TrainConfig
from seqtrain.data.position import TrainBatch
from seqtrain.distributed import make_accelerator
from seqtrain.models import build_model
from seqtrain.step import TrainStep, build_model_and_optimizer

BATCH = 16


@dataclass
class BuiltStep:
    step: TrainStep
    schedule: LRSchedule
    cfg: RunConfig


def built_step(
    run_dir: Path,
    model: str = "tiny",
    steps: int = 50,
    mode: StepMode = "eager",
    cpu: bool = True,
    precision: str = "no",
    **optim: object,
) -> BuiltStep:
    """A `TrainStep` of `model` in `mode` (fp32 on the CPU by default) with --ema-decay,
    --clip-grad-norm etc. from `optim` (OptimConfig fields), its schedule planned for `steps`
    steps of BATCH samples."""
    cfg = RunConfig(
        model=ModelConfig(model=model, channels_last=False),
        optim=OptimConfig(**optim),
        train=TrainConfig(cpu=cpu, mixed_precision=precision),
    )
    cfg.log.report_to = ("csv",)
    accelerate_reset()
    accelerator = make_accelerator(cfg, run_dir)
    net, optimizer = build_model_and_optimizer(cfg, accelerator)
    average = WeightAverage(net, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
    norm = cfg.optim.clip_grad_norm
    clip = GradClip(norm, accelerator.device) if norm else None
    step = TrainStep(accelerator, net, optimizer, cfg, 1, clip, average, mode)
    schedule = LRSchedule(optimizer, cfg.optim)
    schedule.plan(steps * BATCH, BATCH, steps * BATCH)
    return BuiltStep(step, schedule, cfg)


def accelerate_reset() -> None:
    """Forget Accelerate's process-wide state (the next Accelerator builds its own)."""
    AcceleratorState._reset_state(reset_partial_state=True)


def batches(count: int, seed: int = 0) -> list[TrainBatch]:
    """`count` host batches of BATCH random uint8 images (a third of the slots left black, as
    the generator leaves empty slots), labels and dropout keys."""
    generator = torch.Generator().manual_seed(seed)
    made = []
    for _ in range(count):
        images = torch.randint(0, 256, (BATCH, 1, 28, 84), dtype=torch.uint8, generator=generator)
        blank = torch.rand(BATCH, 3, generator=generator) < 1 / 3
        images.view(BATCH, 1, 28, 3, 28).masked_fill_(blank[:, None, None, :, None], 0)
        labels = torch.randint(0, 11, (BATCH, 3), generator=generator)
        keys = torch.randint(0, 2**62, (BATCH,), generator=generator)
        made.append(TrainBatch(images, labels, keys))
    return made


class SeedStyleStep:
    """The step as seqtrain took it before device hyperparameters, in plain torch: for-loop Adam
    with Python-float LR and betas set per step, gradients freed and reallocated, the weight
    average lerped by a Python float. Built with the same seed as `built_step`'s model."""

    def __init__(self, cfg: RunConfig) -> None:
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model.model)
        self.cfg = cfg.optim
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr, foreach=False)
        self.average = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.updates = 0

    def __call__(self, batch: TrainBatch, fraction: float) -> float:
        lr, beta1 = one_cycle(self.cfg.lr, fraction)
        for group in self.optimizer.param_groups:
            group["lr"], group["betas"] = lr, (beta1, group["betas"][1])
        self.optimizer.zero_grad(set_to_none=True)
        x = batch.images.float().div_(255)
        loss = sequence_loss(self.model(x, batch.keys), batch.labels)
        loss.backward()
        if self.cfg.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.optimizer.step()
        if self.cfg.ema_decay:
            weight = 1 - min(self.cfg.ema_decay, (1 + self.updates) / (10 + self.updates))
            for key, value in self.model.state_dict().items():
                if value.is_floating_point():
                    self.average[key].lerp_(value, weight)
                else:
                    self.average[key].copy_(value)
            self.updates += 1
        return loss.item()


SCALAR_READS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.item")


class SyncCensus(TorchDispatchMode):
    """Counts what makes a CUDA device wait for the host: scalar reads, `nonzero`, boolean-mask
    indexing (read or write), also `Tensor.item/tolist/__bool__` called from Python (patched
    inside `counting`)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith(SCALAR_READS) or _boolean_index(name, args):
            self.found.append(name)
        return func(*args, **(kwargs or {}))

    @contextmanager
    def counting(self) -> Iterator[SyncCensus]:
        originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__bool__")}

        def patched(name: str):
            def read(tensor: torch.Tensor, *args: object):
                self.found.append(f"Tensor.{name}")
                return originals[name](tensor, *args)

            return read

        try:
            for name in originals:
                setattr(torch.Tensor, name, patched(name))
            with self:
                yield self
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)


def _boolean_index(name: str, args: tuple) -> bool:
    if not name.startswith(("aten.index.Tensor", "aten.index_put")):
        return False
    indices = args[1] if len(args) > 1 else []
    return any(i is not None and i.dtype == torch.bool for i in indices)
