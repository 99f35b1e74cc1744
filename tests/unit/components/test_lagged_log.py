"""LaggedLog: a log step hands its window over without reading anything back; the figures read
one log step later are the window's exact means, under the step they were taken at, and a
NaN/inf loss in the window stops the run then."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from seqtrain.common.errors import UserError
from seqtrain.components.grad_clip import GradClip
from seqtrain.components.lagged_log import LaggedLog, read_window
from seqtrain.components.loss_window import LossWindow
from support.steps import SyncCensus

CPU = torch.device("cpu")


def filled(losses: list[float], first_step: int = 1) -> LossWindow:
    window = LossWindow(CPU)
    for step, loss in enumerate(losses, start=first_step):
        window.add(torch.tensor(loss), step)
    return window


def clipped(norms: list[float]) -> GradClip:
    """A clip whose window holds `norms` as the pre-clip norms of as many clipped steps."""
    clip = GradClip(1.0, CPU)
    for norm in norms:
        clip._norm_sum += norm
        clip.count()
    return clip


@pytest.fixture
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)


def test_handing_a_window_over_reads_nothing_and_starts_the_next(accelerator) -> None:
    log, window, clip = LaggedLog(accelerator), filled([1.0, 2.0, 3.0, 6.0]), clipped([2.0, 4.0])
    with SyncCensus().counting() as census:
        log.submit(window, clip, step=4, host={"train/lr": 0.5})
    assert census.found == []
    assert (window.batches, window.loss_sum.item()) == (0, 0.0)  # the next window starts empty
    assert clip.take_window()[1] == 0


def test_the_read_is_the_window_s_means_under_its_own_step(accelerator) -> None:
    log = LaggedLog(accelerator)
    assert log.complete() is None  # nothing handed over yet
    log.submit(filled([1.0, 2.0, 3.0, 6.0]), clipped([2.0, 4.0]), step=4,
               host={"train/lr": 0.5})  # fmt: skip
    later = filled([10.0, 20.0], first_step=5)  # the steps trained before the read
    read = log.complete()
    assert read is not None and read.step == 4
    assert read.metrics == {"train/loss": 3.0, "train/lr": 0.5, "train/grad_norm": 3.0}
    assert log.complete() is None  # each window is read once
    log.submit(later, None, step=6, host={})
    assert log.complete().metrics == {"train/loss": 15.0}  # no clipping: no norm logged


def test_a_nan_in_the_window_stops_the_run_at_its_read(accelerator) -> None:
    log = LaggedLog(accelerator)
    log.submit(filled([1.0, 2.0, math.nan, 3.0], first_step=11), None, step=14, host={})
    with pytest.raises(UserError, match=r"loss became NaN/inf at step 13; stopped"):
        log.complete()


def test_reading_now_keeps_the_window(accelerator) -> None:
    window = filled([1.0, 2.0, 6.0])
    assert read_window(accelerator, window) == 3.0
    assert window.batches == 3  # the epoch's window goes on after a mid-epoch checkpoint
    window.add(torch.tensor(math.inf), 4)
    with pytest.raises(UserError, match="at step 4"):
        read_window(accelerator, window)
