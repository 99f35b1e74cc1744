"""LR schedules behind `--sched`: one object the loop steps after every optimizer step and
after every validation, whichever schedule it holds.

`plateau` (the reference) is ReduceLROnPlateau on the global val loss once per epoch;
`onecycle` is OneCycleLR up to --lr and down again, stepped per optimizer step over all
epochs. Both are kept out of `accelerator.prepare` (a prepared scheduler steps once per
process per call) and registered for checkpointing, so a resumed run continues the schedule.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau

from seqtrain.config import OptimConfig


class LRSchedule:
    """The chosen scheduler; its state dict is the scheduler's own."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
        self.per_step = cfg.sched == "onecycle"
        self.total_steps = total_steps
        if self.per_step:
            self.scheduler: OneCycleLR | ReduceLROnPlateau = OneCycleLR(
                optimizer, max_lr=cfg.lr, total_steps=total_steps
            )
        else:
            # eps=0: torch's default skips reductions below 1e-8, freezing a tiny LR silently.
            self.scheduler = ReduceLROnPlateau(
                optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience, eps=0.0
            )

    def after_step(self) -> None:
        """Call after each optimizer step (no host sync). Step i (from 0) runs at the cycle's
        i-th LR, so the last step runs at its minimum, where the LR then stays."""
        if self.per_step and self.scheduler.last_epoch < self.total_steps - 1:
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        """Call once per epoch with the global val loss (the same value on every rank)."""
        if not self.per_step:
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)
