"""One optimizer step, and the model and optimizer it steps: the work between two batches.

`train.py` (the loop) calls `train_step` once per batch; the speed benchmarks time the same
function, so a figure in `docs/benchmarks/` measures the step users train with.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.optim import Adam, AdamW

from seqtrain.components.metrics import sequence_loss
from seqtrain.config import RunConfig
from seqtrain.distributed import prepare_model, to_device
from seqtrain.models import build_model

Batch = tuple[torch.Tensor, torch.Tensor]


def build_model_and_optimizer(
    cfg: RunConfig, accelerator: Accelerator
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The seeded model with memory format/compile applied, and Adam(W), both prepared."""
    set_seed(cfg.train.seed)
    model = prepare_model(build_model(cfg.model.model), cfg, accelerator.device)
    optimizer_class = AdamW if cfg.optim.optimizer == "adamw" else Adam
    optimizer = optimizer_class(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    return accelerator.prepare(model, optimizer)


def train_step(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: RunConfig,
) -> torch.Tensor:
    """One optimizer step on a host batch (uint8 images); returns the loss, still on device."""
    x, y = to_device(*batch, accelerator.device, cfg.model.channels_last)
    loss = sequence_loss(model(x).float(), y, cfg.optim.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    return loss
