"""The training step waits for nothing on the host and keeps its tensors: a census of the
operations that would make a CUDA device wait (none between log steps), the storage of
parameters, gradients, optimizer state, weight average and loss windows unchanged across steps,
hyperparameters as device tensors the schedules overwrite in place, and the same losses and
weights as the step before device hyperparameters, over 50 steps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from seqtrain.components.preemption import PreemptionWatch
from seqtrain.config import PreemptConfig
from support.steps import SeedStyleStep, SyncCensus, accelerate_reset, batches, built_step


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    yield
    accelerate_reset()  # a later in-process run builds its own Accelerator


STEPS = 50
OPTIONS = {"sched": "onecycle", "ema_decay": 0.9, "clip_grad_norm": 1.0, "lr": 3e-3}


def test_a_step_between_log_steps_reads_nothing_back(tmp_path: Path) -> None:
    built = built_step(tmp_path, **OPTIONS)
    watch = PreemptionWatch(PreemptConfig(preempt_check_every=2), torch.device("cpu"))
    data = batches(4)
    built.step(data[0], 1)  # the optimizer's state is created at its first step
    for index, batch in enumerate(data[1:], start=2):
        with SyncCensus().counting() as census:
            built.step(batch, index)
            built.schedule.after_step()
            watch.poll(index)  # a check step (even) too: one process reads its own flags
        assert census.found == [], f"step {index}"
    window = built.step.window  # what the log step hands over (lagged_log.py reads it later)
    assert window.batches == 4 and window.loss_sum.item() > 0


def storages(built) -> dict[str, list[int]]:
    step = built.step
    optimizer = step.optimizer
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    window, epoch = step.window, step.epoch_loss
    return {
        "parameters": [p.data_ptr() for p in step.model.parameters()],
        "gradients": [p.grad.data_ptr() for p in step.model.parameters()],
        "optimizer state": [t.data_ptr() for t in state],
        "lr": [g["lr"].data_ptr() for g in optimizer.param_groups],
        "average": [t.data_ptr() for t in step.average.state.values()]
        + [step.average._updates.data_ptr()],
        "bookkeeping": [
            t.data_ptr() for w in (window, epoch) for t in (w._sum, w._finite_steps)
        ] + [step.clip._norm_sum.data_ptr()],
    }  # fmt: skip


@pytest.mark.parametrize("sched", ["onecycle", "plateau", "cosine"])
def test_steps_keep_their_storage_and_read_the_schedule_from_device_tensors(
    tmp_path: Path, sched: str
) -> None:
    warmup = {"warmup_steps": 2} if sched != "onecycle" else {}
    built = built_step(tmp_path, **{**OPTIONS, "sched": sched, **warmup})
    data = batches(5)
    built.step(data[0], 1)
    built.schedule.after_step()
    before = storages(built)
    lrs = []
    for index, batch in enumerate(data[1:], start=2):
        lr = built.step.optimizer.param_groups[0]["lr"]
        assert isinstance(lr, torch.Tensor) and lr.item() == pytest.approx(built.schedule.current)
        lrs.append(lr.item())
        built.step(batch, index)
        built.schedule.after_step()
        assert storages(built) == before, f"step {index}"
    assert len(set(lrs)) > 1 if sched != "plateau" else lrs[0] == lrs[-1]
    assert built.step.average._updates.item() == built.step.average.updates == 5


def test_fifty_steps_equal_the_seed_style_step(tmp_path: Path) -> None:
    built = built_step(tmp_path, steps=STEPS, **OPTIONS)
    reference = SeedStyleStep(built.cfg)
    model = built.step.model
    for name, param in reference.model.named_parameters():
        assert torch.equal(param, dict(model.named_parameters())[name])  # the same start
    losses, expected = [], []
    for index, batch in enumerate(batches(STEPS), start=1):
        built.step(batch, index)
        losses.append(built.step.window.loss_sum.item())
        built.step.window.reset()
        built.schedule.after_step()
        expected.append(reference(batch, (index - 1) / (STEPS - 1)))
    assert losses == pytest.approx(expected, rel=1e-5)
    trained = model.state_dict()
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(trained[key], value, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(built.step.average.state[key], reference.average[key],
                                   rtol=1e-4, atol=1e-6)  # fmt: skip


def trained(built, data) -> tuple[list[float], dict[str, torch.Tensor]]:
    losses = []
    for index, batch in enumerate(data, start=1):
        built.step(batch, index)
        losses.append(built.step.window.loss_sum.item())
        built.step.window.reset()
        built.schedule.after_step()
    return losses, built.step.model.state_dict()


def test_the_captured_style_step_equals_the_eager_one_and_keeps_its_inputs(
    tmp_path: Path,
) -> None:
    """Mode "static" is what a CUDA graph records (the batch copied into fixed buffers, the
    whole step as one callable), run eagerly: the same training, bit for bit."""
    data = batches(20)
    eager_losses, eager_weights = trained(built_step(tmp_path, **OPTIONS), data)
    built = built_step(tmp_path, mode="static", **OPTIONS)
    built.step(data[0], 1)
    inputs = [t.data_ptr() for t in built.step._graphed.inputs]
    built.step(data[1], 2)
    assert [t.data_ptr() for t in built.step._graphed.inputs] == inputs
    built = built_step(tmp_path, mode="static", **OPTIONS)
    static_losses, static_weights = trained(built, data)
    assert static_losses == eager_losses
    for key, value in eager_weights.items():
        assert torch.equal(static_weights[key], value), key


@pytest.mark.parametrize("mode", ["static", "eager"])
def test_census_of_a_skip_blank_step(tmp_path: Path, mode: str) -> None:
    """The static skip-blank path (what a captured step takes) reads nothing back; the census
    does see the dynamic path's reads (`inked.any()`, mask indexing) on an eager CPU."""
    built = built_step(tmp_path, model="slotnet_narrow_skipblank", mode=mode, **OPTIONS)
    data = batches(2)
    built.step(data[0], 1)
    with SyncCensus().counting() as census:
        built.step(data[1], 2)
    if mode == "static":
        assert census.found == []
    else:
        assert "Tensor.__bool__" in census.found and "aten.index.Tensor" in census.found
