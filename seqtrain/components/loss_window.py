"""Per-step loss bookkeeping kept on the device, in fixed buffers: no host sync, capturable.

A training step's loss stays where it was computed. Each step adds it to a float64 sum and
counts the steps whose running sum is still finite (three small kernels into the same two
tensors at every step, so a captured step replays them as they are). A sum of float32 losses
stays finite exactly while every loss added was finite, so that count is also the number of
good steps before the first NaN/inf one. The host counts the steps itself: reading the window
(at log steps and epoch ends) is the only transfer.
"""

from __future__ import annotations

import time

import torch


class LossWindow:
    """Loss sum, batch count and first non-finite step of the steps since the last reset."""

    def __init__(self, device: torch.device) -> None:
        self._sum = torch.zeros((), dtype=torch.float64, device=device)
        self._finite_steps = torch.zeros((), dtype=torch.int64, device=device)
        self._first_step = 0
        self.batches = 0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, step: int) -> None:
        """Record the loss of global step `step` (steps come consecutively between resets)."""
        self.record(loss)
        self.count(step)

    def record(self, loss: torch.Tensor) -> None:
        """The device half of `add`: the same tensors at every step, no host value."""
        self._sum += loss.detach()
        self._finite_steps += self._sum.isfinite()

    def count(self, step: int) -> None:
        """The host half of `add`."""
        if self.batches == 0:
            self._first_step = step
        self.batches += 1

    @property
    def loss_sum(self) -> torch.Tensor:
        """The float64 sum of the window's losses (a device scalar)."""
        return self._sum

    @property
    def first_bad_step(self) -> torch.Tensor:
        """The first step whose loss was NaN/inf, -1 if none (an int64 device scalar)."""
        bad = self._finite_steps < self.batches
        return torch.where(bad, self._finite_steps + self._first_step, -1)

    def reset(self) -> None:
        self._sum.zero_()
        self._finite_steps.zero_()
        self.batches = 0
        self.started = time.perf_counter()
