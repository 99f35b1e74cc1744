"""One optimizer step, and the model and optimizer it steps: the work between two batches.

`train.py` (the loop) calls a `TrainStep` once per batch; its device work is `train_step`, the
function the speed benchmarks time, so a figure in `docs/benchmarks/` measures the step users
train with. Between the loop's log and check steps a step waits for nothing on the host: the
optimizer reads its LR (and betas) from device tensors, the weight average and the loss windows
update fixed device buffers, and the host only counts (see `seqtrain.components.optimizer`,
`weight_average`, `loss_window`). On one GPU the whole step is then recorded once as a CUDA graph
and replayed (--capture, `seqtrain.components.capture`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs
from torch import nn

from seqtrain.components.capture import GraphedStep, StepMode, prepare_for_mode
from seqtrain.components.grad_clip import GradClip
from seqtrain.components.loss_window import LossWindow
from seqtrain.components.members import seeded_model
from seqtrain.components.metrics import sequence_loss
from seqtrain.components.optimizer import (
    build_optimizer,
    hyperparameters_on_device,
    optimizer_step,
    zero_grad,
)
from seqtrain.components.weight_average import WeightAverage
from seqtrain.config import RunConfig
from seqtrain.data.position import TrainBatch
from seqtrain.distributed import prepare_model, to_device, with_sync_batchnorm

Batch = tuple[torch.Tensor, torch.Tensor]


def build_model_and_optimizer(
    cfg: RunConfig, accelerator: Accelerator
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The seeded model with memory format/compile (and --sync-batchnorm) applied, and
    Adam(W) with device hyperparameters (`build_optimizer`), both prepared."""
    if cfg.model.capture != "off" and accelerator.device.type == "cuda":
        # A captured step records autocast's casts: torch's CUDA graphs want its cache off.
        accelerator.autocast_handler = AutocastKwargs(cache_enabled=False)
    model = with_sync_batchnorm(
        seeded_model(cfg, accelerator.device), cfg, accelerator.num_processes, accelerator.device
    )
    model = prepare_model(model, cfg, accelerator.device)
    optimizer = build_optimizer(model.parameters(), cfg.optim, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    hyperparameters_on_device(optimizer, accelerator.device)  # `prepare` reloads its state
    return model, optimizer


def train_step(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch | TrainBatch,
    cfg: RunConfig,
    clip: GradClip | None = None,
    micro_batches: int = 1,
) -> torch.Tensor:
    """One optimizer step on a host batch (uint8 images; a `TrainBatch` adds each sample's
    dropout key), the gradients clipped by `clip` (--clip-grad-norm; the caller counts the
    clipped step) if given; returns the batch's mean loss, still on device.

    The batch is trained in `micro_batches` equal passes (--micro-batch-size) whose gradients
    add up, each pass's loss weighted 1 / micro_batches: the gradient one pass over the whole
    batch gives. Only the last pass all-reduces the gradients across processes."""
    zero_grad(optimizer)
    parts = list(zip(*(tensor.chunk(micro_batches) for tensor in batch), strict=True))
    losses = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        with nullcontext() if last else accelerator.no_sync(model):
            loss = _loss(accelerator, model, part, cfg)
            accelerator.backward(loss / len(parts))
        losses.append(loss.detach())
    if clip is not None:
        clip.clip_on_device(accelerator, model)
    optimizer_step(optimizer)
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def _loss(
    accelerator: Accelerator, model: nn.Module, part: tuple[torch.Tensor, ...], cfg: RunConfig
) -> torch.Tensor:
    """The loss of one pass: images, labels and (if given) dropout keys moved to the device."""
    images, labels, *keys = part
    x, y = to_device(images, labels, accelerator.device, cfg.model.channels_last)
    sample_keys = keys[0].to(accelerator.device, non_blocking=True) if keys else None
    return sequence_loss(model(x, sample_keys).float(), y, cfg.optim.label_smoothing)


class TrainStep:
    """The loop's optimizer step: `train_step`, then the weight average's update (--ema-decay)
    and the loss windows, all device work; then the host's counts. `window` holds the steps
    since the last log, `epoch_loss` those since `start_epoch`.

    `mode` (`choose_capture`): "eager" runs that work as it is; "graph" records it once as a
    CUDA graph reading fixed input buffers and replays it; "static" reads the same buffers
    without a graph (what the graph records, runnable anywhere). `fallback` is told once if a
    capture fails and the step stays eager."""

    def __init__(
        self,
        accelerator: Accelerator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: RunConfig,
        micro_batches: int = 1,
        clip: GradClip | None = None,
        average: WeightAverage | None = None,
        mode: StepMode = "eager",
        fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.accelerator, self.model, self.optimizer, self.cfg = accelerator, model, optimizer, cfg
        self.micro_batches, self.clip, self.average = micro_batches, clip, average
        self.window = LossWindow(accelerator.device)
        self.epoch_loss = LossWindow(accelerator.device)
        prepare_for_mode(model, mode, cfg)
        self._capture_before_epoch = 0.0
        self._graphed = None
        if mode != "eager":
            graph = mode == "graph"
            self._graphed = GraphedStep(self._on_device, accelerator.device, graph, fallback)

    @property
    def capture_seconds(self) -> float:
        """Seconds spent recording the step as a CUDA graph (not training time)."""
        return 0.0 if self._graphed is None else self._graphed.seconds

    @property
    def epoch_capture_seconds(self) -> float:
        """`capture_seconds` spent since `start_epoch`."""
        return self.capture_seconds - self._capture_before_epoch

    def start_epoch(self) -> None:
        self._capture_before_epoch = self.capture_seconds
        self.window.reset()
        self.epoch_loss.reset()

    def __call__(self, batch: Batch | TrainBatch, step: int) -> None:
        """Train global step `step` on `batch`."""
        if self._graphed is None:
            self._on_device(batch)
        else:
            self._graphed(batch)
        self.window.count(step)
        self.epoch_loss.count(step)
        if self.clip is not None:
            self.clip.count()
        if self.average is not None:
            self.average.count()

    def _on_device(self, batch: Sequence[torch.Tensor]) -> None:
        loss = train_step(
            self.accelerator, self.model, self.optimizer, batch, self.cfg, self.clip,
            self.micro_batches,
        )  # fmt: skip
        if self.average is not None:
            self.average.update_on_device()
        self.window.record(loss)
        self.epoch_loss.record(loss)
