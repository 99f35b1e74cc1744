"""LR schedules behind `--sched`, the LR rule behind `--lr-scale`, and early stopping: one
schedule object the loop steps after every optimizer step and after every validation, whichever
schedule it holds; early stopping reads the same global val summary (its --best-metric, which
also picks checkpoints/best).

The LR trained with is --lr scaled for the global batch (`effective_lr`), fixed when the run
(or a resumed segment) is planned. `plateau` (the reference) is ReduceLROnPlateau on the global
val loss once per epoch; `onecycle` has OneCycleLR's shape up to that LR and down again over all
epochs; `cosine` decays from it to --lr-floor of it. A warm-up (plateau, cosine) raises the LR
linearly over its first samples; plateau decisions wait until it is over. Every curve is
planned in *samples* trained rather than steps: a run resumed on another number of processes
(another global batch) continues the curve from where it was, with no jump at the join (beyond
what --lr-scale asks for the new batch), and still ends at the minimum. The schedule is kept
out of `accelerator.prepare` (a prepared scheduler steps once per process per call) and
registered for checkpointing, so a resumed run continues it exactly.

The optimizer holds the LR (and beta1) as device tensors that a captured step reads; the
schedule overwrites them in place after every step (see `seqtrain.components.optimizer`) and
keeps the LR it set as a Python float (`current`), so reading the LR costs no host sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from seqtrain.common.errors import UserError
from seqtrain.components.optimizer import set_hyperparameters
from seqtrain.config import OptimConfig

# OneCycleLR's defaults: start at max/25, peak at 30 %, end at start/1e4, cosine; Adam's beta1
# moves the other way between 0.95 and 0.85.
_DIV, _FINAL_DIV, _PEAK_AT = 25.0, 1e4, 0.3
_MAX_BETA1, _MIN_BETA1 = 0.95, 0.85


def effective_lr(cfg: OptimConfig, global_batch: int) -> float:
    """--lr scaled by --lr-scale from --lr-base-batch to `global_batch` samples per step."""
    ratio = global_batch / cfg.lr_base_batch
    factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scale]
    return cfg.lr * factor


def lr_rule_line(cfg: OptimConfig, global_batch: int) -> str:
    """The start-up line saying which LR the run trains with, and why."""
    lr = effective_lr(cfg, global_batch)
    if cfg.lr_scale == "none":
        return f"LR {lr:.3g} at global batch {global_batch} (--lr-scale none)"
    rule = f"{global_batch}/{cfg.lr_base_batch}"
    rule = rule if cfg.lr_scale == "linear" else f"sqrt({rule})"
    return f"LR {lr:.3g} = --lr {cfg.lr:.3g} x {rule} (--lr-scale {cfg.lr_scale})"


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


class SampleClock:
    """Where a run is in a curve planned over the samples it trains, as a fraction from 0 to 1.
    The fraction is `join_fraction` + the rest of the curve in proportion to the samples trained
    since `join_samples`, reaching 1 at the planned last step. A new plan (other samples left,
    e.g. after a resize) starts at the current fraction: the curve is continuous. The curve
    starts at `begin` samples (after a warm-up): the fraction is 0 until then."""

    def __init__(self) -> None:
        self.samples = 0  # trained so far
        self.global_batch = 0
        self.last_step_at: int | None = None  # samples trained before the planned last step
        self.join_samples, self.join_fraction = 0, 0.0

    def plan(self, samples_left: int, global_batch: int, begin: int = 0) -> None:
        last_step_at = self.samples + samples_left - global_batch
        if last_step_at != self.last_step_at:
            self.join_samples, self.join_fraction = max(self.samples, begin), self.fraction()
        self.last_step_at, self.global_batch = last_step_at, global_batch

    def fraction(self) -> float:
        if self.last_step_at is None or self.samples <= self.join_samples:
            return self.join_fraction  # 0 until planned, and during a warm-up
        span = self.last_step_at - self.join_samples
        if span <= 0:
            return 1.0
        done = (self.samples - self.join_samples) / span
        return min(1.0, self.join_fraction + (1 - self.join_fraction) * done)

    def step(self) -> None:
        self.samples += self.global_batch

    _STATE = ("samples", "global_batch", "last_step_at", "join_samples", "join_fraction")

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._STATE:
            setattr(self, name, state[name])


class LRSchedule:
    """The LR of every step under --sched, --lr-scale and the warm-up."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig):
        self.optimizer, self.cfg = optimizer, cfg
        self.clock = SampleClock()
        self.lr: float | None = None  # the effective LR, once planned
        self.current = float(optimizer.param_groups[0]["lr"])  # the LR the next step trains at
        self.warmup_samples = 0  # fixed at the first plan
        self.plateau: ReduceLROnPlateau | None = None
        if cfg.sched == "plateau":
            # eps=0: torch's default skips reductions below 1e-8, freezing a tiny LR silently.
            self.plateau = ReduceLROnPlateau(
                optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience, eps=0.0
            )

    def plan(self, samples_left: int, global_batch: int, epoch_samples: int) -> None:
        """Call once before training, after any resume: the samples the run will still train,
        `global_batch` per step, and an epoch's samples (to size --warmup-epochs). Step i of the
        plan runs at the curve's LR for the samples before it, so the last step runs at the
        minimum, where the LR then stays."""
        lr = effective_lr(self.cfg, global_batch)
        fresh = self.lr is None
        if fresh:
            self.warmup_samples = self._warmup_samples(samples_left, global_batch, epoch_samples)
        elif self.plateau is not None:
            # The plateau's reductions live in the optimizer's LR: keep them, on the new scale.
            self._set(self.current * lr / self.lr)
        self.lr = lr
        self.clock.plan(samples_left, global_batch, begin=self.warmup_samples)
        if self.plateau is None or fresh or self._warming_up():
            self._apply()

    def check_warmup(self, run_samples: int, global_batch: int, epoch_samples: int) -> None:
        """Refuse, before anything is written, a warm-up that would not end before the last
        step of a run of `run_samples` (the whole run, from its start)."""
        self._warmup_samples(run_samples, global_batch, epoch_samples)

    def _warmup_samples(self, samples_left: int, global_batch: int, epoch_samples: int) -> int:
        cfg = self.cfg
        if cfg.warmup_epochs:
            warmup = max(global_batch, round(cfg.warmup_epochs * epoch_samples))
        else:
            warmup = cfg.warmup_steps * global_batch
        if warmup and warmup >= samples_left:
            flag = "--warmup-epochs" if cfg.warmup_epochs else "--warmup-steps"
            raise UserError(
                f"{flag}: the warm-up ({math.ceil(warmup / global_batch)} steps) must end before "
                f"the run's last step (it trains {samples_left // global_batch} steps)"
            )
        return warmup

    def _warming_up(self) -> bool:
        """The next step's LR is still below the planned one."""
        return self.clock.samples + self.clock.global_batch < self.warmup_samples

    def after_step(self) -> None:
        """Call after each optimizer step (no host sync)."""
        warming_up = self._warming_up()
        self.clock.step()
        if self.plateau is None or warming_up:  # the warm-up's last step sets the plateau's LR
            self._apply()

    def after_epoch(self, val_loss: float) -> None:
        """Call once per epoch with the global val loss (the same value on every rank)."""
        if self.plateau is not None and not self._warming_up():
            before = self._device_lr()
            self.plateau.step(val_loss)
            if self._device_lr() != before:
                # Cut the host's LR and write it back: the device tensor's float32 would
                # compound its rounding at every cut (1e-12 read back as 9.99999996e-13).
                self._set(self.current * self.cfg.plateau_factor)

    def _device_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])  # a read: once per epoch at most

    def _apply(self) -> None:
        assert self.lr is not None, "plan() first"
        if self.cfg.sched == "onecycle":
            lr, beta1 = one_cycle(self.lr, self.clock.fraction())
            self._set(lr, beta1)
            return
        ramp = 1.0
        if self.warmup_samples:
            ramp = min(1.0, (self.clock.samples + self.clock.global_batch) / self.warmup_samples)
        if self.cfg.sched == "cosine":
            self._set(ramp * _cosine(self.lr, self.lr * self.cfg.lr_floor, self.clock.fraction()))
        else:
            self._set(ramp * self.lr)

    def _set(self, lr: float, beta1: float | None = None) -> None:
        set_hyperparameters(self.optimizer, lr, beta1)
        self.current = lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "clock": self.clock.state_dict(),
            "lr": self.lr,
            "warmup_samples": self.warmup_samples,
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
            "current": self.current,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "clock" not in state:  # saved before warm-up and --lr-scale: the scheduler's own
            state = {
                "clock": self.clock.state_dict() if self.plateau else state,
                "lr": self.cfg.lr,
                "warmup_samples": 0,
                "plateau": state if self.plateau else None,
            }
        self.clock.load_state_dict(state["clock"])
        self.lr, self.warmup_samples = state["lr"], state["warmup_samples"]
        # Saved before the LR became a device tensor: the optimizer's LR (loaded first) is it.
        self.current = state.get("current", self._device_lr())
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])


# --best-metric: the key of the val summary it reads, and whether higher is better.
_BEST_METRICS = {"val_loss": ("loss", False), "val_exact_match": ("exact_match", True)}


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs without a better value of `metric` (--best-metric; patience
    0: never); fed the same global val summary on every rank, so every rank reaches the same
    decision without further communication. Its "new best" also picks checkpoints/best."""

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
        return 0 < self.patience <= self.bad_epochs

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "metric": self.metric}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checkpoints older than --best-metric recorded no metric: theirs was the val loss.
        if state.get("metric", "val_loss") != self.metric:
            return  # an accepted change of metric (--accept-changes) starts its record afresh
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])
