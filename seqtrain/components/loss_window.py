"""Per-step loss bookkeeping kept on the device: one small copy per step, no host sync.

A training step's loss stays where it was computed. Each step copies it into the next slot of
a preallocated buffer (one kernel: cheap next to a step, where the naive float64 sum and
finite check launch about eight tiny kernels, see bench/step_overheads.py); a full buffer, or
a read, folds the slots into a float64 sum and the first non-finite step in a few kernels.
"""

from __future__ import annotations

import time

import torch

CAPACITY = 256  # slots between folds: folding costs a few kernels, once per CAPACITY steps


class LossWindow:
    """Loss sum, batch count and first non-finite step of the steps since the last reset."""

    def __init__(self, device: torch.device, capacity: int = CAPACITY) -> None:
        self._slots = torch.zeros(capacity, dtype=torch.float32, device=device)
        self._offsets = torch.arange(capacity, device=device)
        self._used = 0
        self._first_slot_step = 0
        self._sum = torch.zeros((), dtype=torch.float64, device=device)
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.batches = 0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, step: int) -> None:
        """Record the loss of global step `step` (steps come consecutively between resets)."""
        if self._used == len(self._slots):
            self._fold()
        if self._used == 0:
            self._first_slot_step = step
        self._slots[self._used].copy_(loss.detach())
        self._used += 1
        self.batches += 1

    @property
    def values(self) -> torch.Tensor:
        """float64 [loss sum, batches] on the device (summable over ranks)."""
        self._fold()
        return torch.stack([self._sum, self._sum.new_tensor(self.batches)])

    @property
    def first_bad_step(self) -> torch.Tensor:
        """The first step whose loss was NaN/inf, -1 if none (an int64 device scalar)."""
        self._fold()
        return self._first_bad

    def reset(self) -> None:
        self._fold()
        self._sum.zero_()
        self._first_bad.fill_(-1)
        self.batches = 0
        self.started = time.perf_counter()

    def _fold(self) -> None:
        if self._used == 0:
            return
        losses = self._slots[: self._used]
        self._sum += losses.sum(dtype=torch.float64)
        bad = ~torch.isfinite(losses)
        # The first bad slot's step, or -1: steps of good slots are pushed past any real one.
        never = torch.iinfo(torch.int64).max
        steps = torch.where(bad, self._offsets[: self._used] + self._first_slot_step, never)
        first = steps.min()
        found = (self._first_bad < 0) & (first != never)
        self._first_bad = torch.where(found, first, self._first_bad)
        self._used = 0
