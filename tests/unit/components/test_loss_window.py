"""LossWindow: exact sums and first non-finite step across buffer folds, one kernel per step."""

from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from seqtrain.components.loss_window import LossWindow

CPU = torch.device("cpu")


class CountKernels(TorchDispatchMode):
    """Counts the aten operators that compute (views such as `select` launch no kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_sum_count_and_first_bad_step_across_folds() -> None:
    window = LossWindow(CPU, capacity=4)
    losses = [0.5, 1.0, 2.0, 0.25, 4.0, 1.5, math.nan, 3.0, math.inf, 1.0]
    for step, loss in enumerate(losses, start=101):
        window.add(torch.tensor(loss), step)
    assert window.batches == 10
    assert int(window.first_bad_step) == 107
    window.reset()
    for step, loss in enumerate([0.5, 1.5, 2.5, 3.5, 4.5, 5.5], start=111):
        window.add(torch.tensor(loss), step)
    loss_sum, batches = window.values.tolist()
    assert (loss_sum, batches) == (18.0, 6.0)
    assert int(window.first_bad_step) == -1


def test_a_step_launches_one_kernel() -> None:
    window = LossWindow(CPU, capacity=8)
    loss = torch.tensor(0.5, requires_grad=True) * 2
    window.add(loss, 1)
    with CountKernels() as counted:
        window.add(loss, 2)
    assert counted.ops == ["aten.copy_.default"]
