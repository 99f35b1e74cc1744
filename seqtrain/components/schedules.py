"""LR schedules behind `--sched`: one object the loop steps after every optimizer step and
after every validation, whichever schedule it holds; and early stopping, which reads the same
global val summary (its --best-metric, which also picks checkpoints/best).

`plateau` (the reference) is ReduceLROnPlateau on the global val loss once per epoch;
`onecycle` has OneCycleLR's shape up to --lr and down again over all epochs, planned in
*samples* trained rather than steps: a run resumed on another number of processes (another
global batch) continues the curve from where it was, with no jump at the join, and still ends
at the minimum. Both are kept out of `accelerator.prepare` (a prepared scheduler steps once per
process per call) and registered for checkpointing, so a resumed run continues the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from seqtrain.config import OptimConfig

# OneCycleLR's defaults: start at max/25, peak at 30 %, end at start/1e4, cosine; Adam's beta1
# moves the other way between 0.95 and 0.85.
_DIV, _FINAL_DIV, _PEAK_AT = 25.0, 1e4, 0.3
_MAX_BETA1, _MIN_BETA1 = 0.95, 0.85


def one_cycle(max_lr: float, fraction: float) -> tuple[float, float]:
    """(LR, beta1) at `fraction` (0 to 1) of the cycle."""
    start, end = max_lr / _DIV, max_lr / _DIV / _FINAL_DIV
    if fraction <= _PEAK_AT:
        t = fraction / _PEAK_AT
        return _cosine(start, max_lr, t), _cosine(_MAX_BETA1, _MIN_BETA1, t)
    t = (fraction - _PEAK_AT) / (1 - _PEAK_AT)
    return _cosine(max_lr, end, t), _cosine(_MIN_BETA1, _MAX_BETA1, t)


def _cosine(begin: float, finish: float, t: float) -> float:
    return finish + (begin - finish) / 2 * (math.cos(math.pi * t) + 1)


class OneCycleInSamples:
    """The one-cycle over the samples a run trains. The cycle's position is
    `join_fraction` + the rest of the cycle in proportion to the samples trained since
    `join_samples`, reaching the end at the planned last step. A new plan (other samples left,
    e.g. after a resize) starts at the current position: the LR is continuous."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_lr: float) -> None:
        self.optimizer = optimizer
        self.max_lr = max_lr
        self.samples = 0  # trained so far
        self.global_batch = 0
        self.last_step_at: int | None = None  # samples trained before the planned last step
        self.join_samples, self.join_fraction = 0, 0.0

    def plan(self, samples_left: int, global_batch: int) -> None:
        last_step_at = self.samples + samples_left - global_batch
        if self.last_step_at is None:
            self.join_samples, self.join_fraction = self.samples, 0.0
        elif last_step_at != self.last_step_at:
            self.join_samples, self.join_fraction = self.samples, self.fraction()
        self.last_step_at, self.global_batch = last_step_at, global_batch
        self._apply()

    def fraction(self) -> float:
        if self.last_step_at is None:  # not planned yet
            return 0.0
        span = self.last_step_at - self.join_samples
        if span <= 0:
            return 1.0
        done = (self.samples - self.join_samples) / span
        return min(1.0, self.join_fraction + (1 - self.join_fraction) * done)

    def step(self) -> None:
        self.samples += self.global_batch
        self._apply()

    def _apply(self) -> None:
        lr, beta1 = one_cycle(self.max_lr, self.fraction())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if "betas" in group:
                group["betas"] = (beta1, group["betas"][1])

    _STATE = ("samples", "global_batch", "last_step_at", "join_samples", "join_fraction")

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._STATE:
            setattr(self, name, state[name])


class LRSchedule:
    """The chosen scheduler; its state dict is the scheduler's own."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig):
        self.per_step = cfg.sched == "onecycle"
        if self.per_step:
            self.scheduler: OneCycleInSamples | ReduceLROnPlateau = OneCycleInSamples(
                optimizer, cfg.lr
            )
        else:
            # eps=0: torch's default skips reductions below 1e-8, freezing a tiny LR silently.
            self.scheduler = ReduceLROnPlateau(
                optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience, eps=0.0
            )

    def plan(self, samples_left: int, global_batch: int) -> None:
        """Call once before training, after any resume: the samples the run will still train,
        `global_batch` per step. Step i of the plan runs at the cycle's LR for the samples
        before it, so the last step runs at the minimum, where the LR then stays."""
        if isinstance(self.scheduler, OneCycleInSamples):
            self.scheduler.plan(samples_left, global_batch)

    def after_step(self) -> None:
        """Call after each optimizer step (no host sync)."""
        if isinstance(self.scheduler, OneCycleInSamples):
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        """Call once per epoch with the global val loss (the same value on every rank)."""
        if not self.per_step:
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


# --best-metric: the key of the val summary it reads, and whether higher is better.
_BEST_METRICS = {"val_loss": ("loss", False), "val_exact_match": ("exact_match", True)}


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs without a better value of `metric` (--best-metric); fed the
    same global val summary on every rank, so every rank reaches the same decision without
    further communication. Its "new best" also picks checkpoints/best."""

    patience: int
    metric: str = "val_loss"
    best: float = field(init=False)
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        self.best = self._worst

    @property
    def _worst(self) -> float:
        return -math.inf if self._higher_is_better else math.inf

    @property
    def _higher_is_better(self) -> bool:
        return _BEST_METRICS[self.metric][1]

    def update(self, val: dict[str, float]) -> bool:
        """Record one epoch's val summary; True when its metric is a new best (NaN never is)."""
        value = val[_BEST_METRICS[self.metric][0]]
        if (value > self.best) if self._higher_is_better else (value < self.best):
            self.best, self.bad_epochs = value, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "metric": self.metric}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checkpoints older than --best-metric recorded no metric: theirs was the val loss.
        if state.get("metric", "val_loss") != self.metric:
            return  # an accepted change of metric (--accept-changes) starts its record afresh
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])
