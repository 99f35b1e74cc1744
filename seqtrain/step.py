"""One optimizer step, and the model and optimizer it steps: the work between two batches.

`train.py` (the loop) calls `train_step` once per batch; the speed benchmarks time the same
function, so a figure in `docs/benchmarks/` measures the step users train with.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.optim import Adam, AdamW

from seqtrain.components.grad_clip import GradClip
from seqtrain.components.metrics import sequence_loss
from seqtrain.config import RunConfig
from seqtrain.data.position import TrainBatch
from seqtrain.distributed import prepare_model, to_device, with_sync_batchnorm
from seqtrain.models import build_model

Batch = tuple[torch.Tensor, torch.Tensor]


def build_model_and_optimizer(
    cfg: RunConfig, accelerator: Accelerator
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The seeded model with memory format/compile (and --sync-batchnorm) applied, and
    Adam(W), both prepared."""
    set_seed(cfg.train.seed)
    model = with_sync_batchnorm(
        build_model(cfg.model.model), cfg, accelerator.num_processes, accelerator.device
    )
    model = prepare_model(model, cfg, accelerator.device)
    optimizer_class = AdamW if cfg.optim.optimizer == "adamw" else Adam
    optimizer = optimizer_class(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    return accelerator.prepare(model, optimizer)


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
    dropout key), the gradients clipped by `clip` (--clip-grad-norm) if given; returns the
    batch's mean loss, still on device.

    The batch is trained in `micro_batches` equal passes (--micro-batch-size) whose gradients
    add up, each pass's loss weighted 1 / micro_batches: the gradient one pass over the whole
    batch gives. Only the last pass all-reduces the gradients across processes."""
    optimizer.zero_grad(set_to_none=True)
    parts = list(zip(*(tensor.chunk(micro_batches) for tensor in batch), strict=True))
    losses = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        with nullcontext() if last else accelerator.no_sync(model):
            loss = _loss(accelerator, model, part, cfg)
            accelerator.backward(loss / len(parts))
        losses.append(loss.detach())
    if clip is not None:
        clip(accelerator, model)
    optimizer.step()
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def _loss(
    accelerator: Accelerator, model: nn.Module, part: tuple[torch.Tensor, ...], cfg: RunConfig
) -> torch.Tensor:
    """The loss of one pass: images, labels and (if given) dropout keys moved to the device."""
    images, labels, *keys = part
    x, y = to_device(images, labels, accelerator.device, cfg.model.channels_last)
    sample_keys = keys[0].to(accelerator.device, non_blocking=True) if keys else None
    return sequence_loss(model(x, sample_keys).float(), y, cfg.optim.label_smoothing)
