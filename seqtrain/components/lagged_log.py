"""The train-loss log every --log-every steps, read one window late so a log step never waits.

At a log step the loop hands the window over (`submit`): the device packs its sums (loss,
first non-finite step, pre-clip gradient norm) into one small tensor, the ranks gather it (a
collective queued behind the step's kernels like any other), the result is copied into pinned
host memory behind an event, and the window's buffers are zeroed. Nothing is read: the host
goes on queueing steps. The values are read when the next window is handed over (`complete`),
by which time the device has long finished them, and logged under the step they were taken at.
Before anything that must have seen every logged step (a checkpoint, the epoch's end) the loop
completes the pending window first, so a run killed and resumed logs each step once.

The cost of not waiting: a NaN/inf loss is reported up to one window later (still before any
checkpoint is saved), and samples/s is measured on the host's clock over the window, which
runs ahead of the device by at most the queued steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator

from seqtrain.common.errors import UserError
from seqtrain.components.grad_clip import GradClip
from seqtrain.components.loss_window import LossWindow


@dataclass
class WindowRead:
    """One window's host figures (`step`: the global step it was taken at)."""

    step: int
    loss: float  # the mean over the window's steps and all ranks
    grad_norm: float | None  # the mean pre-clip norm; None: no step of the window was clipped
    host: dict[str, float]  # what the host knew at that step (LR, samples/s), logged with it

    @property
    def metrics(self) -> dict[str, float]:
        """The W&B/CSV record of the window."""
        norm = {} if self.grad_norm is None else {"train/grad_norm": self.grad_norm}
        return {"train/loss": self.loss, **self.host, **norm}


@dataclass
class _Pending:
    step: int
    batches: int  # per rank: every rank takes the same steps
    clipped_steps: int
    host: dict[str, float]
    rows: torch.Tensor  # [ranks, 3] on the host, filled once `ready` has passed
    ready: torch.cuda.Event | None


class LaggedLog:
    """Windows handed over at log steps and read one log step later."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self._pending: _Pending | None = None

    def submit(
        self, window: LossWindow, clip: GradClip | None, step: int, host: dict[str, float]
    ) -> None:
        """Queue the read of `window` (and the clip's norms) taken at `step`, then reset both:
        device work and a copy behind an event, no host sync. `host`: figures logged with it."""
        norm_sum, clipped = clip.take_window() if clip is not None else (None, 0)
        gathered = _gather_rows(self.accelerator, window, norm_sum)
        on_gpu = gathered.device.type == "cuda"
        rows = torch.empty(gathered.shape, dtype=gathered.dtype, pin_memory=on_gpu)
        rows.copy_(gathered, non_blocking=on_gpu)
        ready = torch.cuda.Event() if on_gpu else None
        if ready is not None:
            ready.record()
        self._pending = _Pending(step, window.batches, clipped, host, rows, ready)
        window.reset()

    def complete(self) -> WindowRead | None:
        """The pending window's figures (None if none is pending); every rank raises together
        if any rank's loss was NaN/inf in it."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        if pending.ready is not None:
            pending.ready.synchronize()
        loss, grad_norm = _means(pending.rows.tolist(), pending.batches, pending.clipped_steps)
        return WindowRead(pending.step, loss, grad_norm, pending.host)


def read_window(accelerator: Accelerator, window: LossWindow) -> float:
    """The window's mean loss over all ranks, read now (a blocking read; the window is kept):
    every rank raises together if any rank's loss was NaN/inf."""
    rows = _gather_rows(accelerator, window, None).tolist()
    return _means(rows, window.batches, 0)[0]


def _gather_rows(
    accelerator: Accelerator, window: LossWindow, norm_sum: torch.Tensor | None
) -> torch.Tensor:
    """Every rank's [loss sum, first bad step (-1: none), pre-clip norm sum] ([ranks, 3],
    float64 on the device; float64 holds any step number exactly)."""
    loss_sum = window.loss_sum
    row = torch.stack([
        loss_sum,
        window.first_bad_step.to(loss_sum.dtype),
        norm_sum if norm_sum is not None else torch.zeros_like(loss_sum),
    ])  # fmt: skip
    return accelerator.gather(row.reshape(1, 3))


def _means(rows: list[list[float]], batches: int, clipped: int) -> tuple[float, float | None]:
    """The mean loss and pre-clip norm of gathered rows (`_gather_rows`), or the NaN/inf
    error every rank raises alike."""
    bad_steps = [int(row[1]) for row in rows if row[1] >= 0]
    if bad_steps:
        raise UserError(
            f"loss became NaN/inf at step {min(bad_steps)}; stopped, the last good checkpoint "
            "is kept (try a lower --lr)"
        )
    loss = sum(row[0] for row in rows) / max(batches * len(rows), 1)
    # Every rank clips by the same global norm (grad_clip.py), so rank 0's sum is the job's.
    grad_norm = rows[0][2] / clipped if clipped else None
    return loss, grad_norm
