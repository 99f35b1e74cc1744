"""The LR of every step under --lr-scale, a warm-up and --sched, and early stopping's patience:
the schedule object stepped as the loop steps it, on a one-parameter Adam."""

from __future__ import annotations

import math

import pytest
import torch

from seqtrain.components.schedules import EarlyStopping, LRSchedule, effective_lr
from seqtrain.config import OptimConfig, RunConfig

LR = 1e-2


def schedule(**optim: object) -> LRSchedule:
    weight = torch.nn.Parameter(torch.zeros(1))
    return LRSchedule(torch.optim.Adam([weight], lr=LR), OptimConfig(lr=LR, **optim))


def lr_of(sched: LRSchedule) -> float:
    return sched.optimizer.param_groups[0]["lr"]


def step_lrs(sched: LRSchedule, steps: int) -> list[float]:
    """The LR each of the next `steps` steps trains with."""
    lrs = []
    for _ in range(steps):
        lrs.append(lr_of(sched))
        sched.after_step()
    return lrs


@pytest.mark.parametrize(
    ("rule", "batch", "factor"),
    [("none", 512, 1.0), ("linear", 512, 4.0), ("sqrt", 512, 2.0), ("linear", 64, 0.5)],
)
def test_lr_scale_sets_the_lr_for_the_global_batch(rule: str, batch: int, factor: float) -> None:
    cfg = OptimConfig(lr=LR, lr_scale=rule, lr_base_batch=128)  # type: ignore[arg-type]
    assert effective_lr(cfg, batch) == pytest.approx(LR * factor)
    sched = schedule(lr_scale=rule)
    sched.plan(10 * batch, batch, 10 * batch)
    assert lr_of(sched) == pytest.approx(LR * factor)


def test_warmup_rises_linearly_then_cosine_falls_to_the_floor() -> None:
    sched = schedule(sched="cosine", warmup_steps=4, lr_floor=0.1)
    sched.plan(20 * 8, 8, 20 * 8)
    lrs = step_lrs(sched, 20)
    assert lrs[:4] == pytest.approx([LR / 4, LR / 2, 3 * LR / 4, LR])
    assert lrs[4] == pytest.approx(LR)  # the cosine starts where the warm-up ends
    decay = lrs[4:]
    assert decay == sorted(decay, reverse=True) and len(set(decay)) == len(decay)
    assert decay[-1] == pytest.approx(0.1 * LR)  # the last step trains at the floor
    cosine = [0.1 * LR + 0.9 * LR * (1 + math.cos(math.pi * k / 15)) / 2 for k in range(16)]
    assert decay == pytest.approx(cosine)
    assert step_lrs(sched, 2) == pytest.approx([0.1 * LR] * 2)  # and the LR stays there


@pytest.mark.parametrize(("rule", "jump"), [("none", 1.0), ("linear", 2.0)])
def test_cosine_continues_after_a_resume_on_another_global_batch(rule: str, jump: float) -> None:
    """12 of 40 steps at batch 8, then the rest resumed at batch 16: no jump at the join beyond
    --lr-scale's for the doubled batch, and the floor at the new plan's last step."""
    first = schedule(sched="cosine", warmup_steps=2, lr_scale=rule)
    first.plan(40 * 8, 8, 40 * 8)
    step_lrs(first, 12)
    unbroken = lr_of(first)  # what the unbroken run at batch 8 trains next
    state = first.state_dict()
    resumed = schedule(sched="cosine", warmup_steps=2, lr_scale=rule)
    resumed.load_state_dict(state)
    resumed.plan(28 * 8, 16, 40 * 8)  # 14 steps of 16 left
    after = step_lrs(resumed, 14)
    base = effective_lr(OptimConfig(lr=LR, lr_scale=rule), 8)  # type: ignore[arg-type]
    assert after[0] == pytest.approx(unbroken * jump)
    assert after == sorted(after, reverse=True)
    assert after[-1] == pytest.approx(0.0, abs=1e-12) and base * jump == pytest.approx(resumed.lr)


def test_plateau_decides_only_after_the_warmup() -> None:
    sched = schedule(warmup_steps=6, plateau_patience=0)
    sched.plan(100 * 8, 8, 10 * 8)
    assert step_lrs(sched, 3) == pytest.approx([LR / 6, 2 * LR / 6, 3 * LR / 6])
    sched.after_epoch(1.0)
    sched.after_epoch(2.0)  # worse, with patience 0: would cut the LR if it counted
    assert step_lrs(sched, 3) == pytest.approx([4 * LR / 6, 5 * LR / 6, LR])
    sched.after_epoch(1.0)
    sched.after_epoch(2.0)
    assert lr_of(sched) == pytest.approx(0.1 * LR)  # a decision after the warm-up counts
    assert step_lrs(sched, 2) == pytest.approx([0.1 * LR] * 2)  # and the warm-up left it


def test_plateau_resumed_on_a_larger_batch_keeps_its_cut_on_the_new_scale() -> None:
    first = schedule(lr_scale="linear", plateau_patience=0)
    first.plan(100 * 128, 128, 10 * 128)
    first.after_epoch(1.0)
    first.after_epoch(2.0)
    assert lr_of(first) == pytest.approx(0.1 * LR)
    resumed = schedule(lr_scale="linear", plateau_patience=0)
    resumed.optimizer.load_state_dict(first.optimizer.state_dict())  # as a checkpoint does
    resumed.load_state_dict(first.state_dict())
    resumed.plan(50 * 256, 256, 5 * 256)
    assert lr_of(resumed) == pytest.approx(0.2 * LR)


def test_a_schedule_saved_before_warmup_and_scaling_resumes() -> None:
    """Checkpoints written before --lr-scale held only the scheduler's own state."""
    plateau = schedule()
    plateau.optimizer.param_groups[0]["lr"] = 0.1 * LR  # a cut, restored with the optimizer
    plateau.load_state_dict(plateau.plateau.state_dict())  # type: ignore[union-attr]
    plateau.plan(50 * 16, 16, 5 * 16)
    assert lr_of(plateau) == pytest.approx(0.1 * LR)
    cycle = schedule(sched="onecycle")
    old = {"samples": 160, "global_batch": 16, "last_step_at": 304, "join_samples": 0,
           "join_fraction": 0.0}  # fmt: skip
    cycle.load_state_dict(old)
    cycle.plan(160, 16, 160)
    fresh = schedule(sched="onecycle")
    fresh.plan(320, 16, 160)
    step_lrs(fresh, 10)
    assert lr_of(cycle) == pytest.approx(lr_of(fresh))


def test_a_warmup_as_long_as_the_run_is_refused() -> None:
    from seqtrain.common.errors import UserError

    with pytest.raises(UserError, match=r"--warmup-steps: the warm-up \(10 steps\) must end"):
        schedule(warmup_steps=10).plan(10 * 8, 8, 10 * 8)


def test_early_stopping_defaults_to_off_where_the_lr_is_planned_to_the_end() -> None:
    assert RunConfig().train.early_stop_patience == 5
    for planned in ("onecycle", "cosine"):
        assert RunConfig(optim=OptimConfig(sched=planned)).train.early_stop_patience == 0
    never = EarlyStopping(patience=0)
    for loss in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0):
        never.update({"loss": loss})
    assert not never.should_stop and never.bad_epochs == 6
