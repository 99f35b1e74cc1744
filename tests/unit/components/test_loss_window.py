"""LossWindow: exact sums and the first non-finite step, recorded into the same device tensors at
every step (what a captured step replays), with no host read."""

from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from seqtrain.components.loss_window import LossWindow

CPU = torch.device("cpu")


class RecordOps(TorchDispatchMode):
    """The aten operators a block runs and the storages each writes (its first argument)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.written: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        if func._schema.is_mutable:
            self.written.append(args[0].untyped_storage().data_ptr())
        return func(*args, **(kwargs or {}))


def test_sum_count_and_first_bad_step() -> None:
    window = LossWindow(CPU)
    losses = [0.5, 1.0, 2.0, 0.25, 4.0, 1.5, math.nan, 3.0, math.inf, 1.0]
    for step, loss in enumerate(losses, start=101):
        window.add(torch.tensor(loss), step)
    assert window.batches == 10
    assert int(window.first_bad_step) == 107
    window.reset()
    for step, loss in enumerate([0.5, 1.5, 2.5, 3.5, 4.5, 5.5], start=111):
        window.add(torch.tensor(loss), step)
    assert (window.loss_sum.item(), window.batches) == (18.0, 6)
    assert int(window.first_bad_step) == -1


def test_an_inf_then_a_nan_reports_the_inf() -> None:
    window = LossWindow(CPU)
    for step, loss in enumerate([1.0, math.inf, -math.inf, math.nan], start=1):
        window.add(torch.tensor(loss), step)
    assert int(window.first_bad_step) == 2


def test_a_step_writes_the_same_tensors_and_reads_nothing() -> None:
    window = LossWindow(CPU)
    loss = torch.tensor(0.5, requires_grad=True) * 2
    window.add(loss, 1)
    written = []
    for step in (2, 3):
        with RecordOps() as recorded:
            window.record(loss)
        window.count(step)
        written.append(recorded.written)
        assert not any("_local_scalar_dense" in op for op in recorded.ops)
    assert written[0] == written[1] and len(written[0]) == 2
    assert (window.loss_sum.item(), window.batches) == (3.0, 3)
