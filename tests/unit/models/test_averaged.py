"""Ensembles and test-time shifts: slot-local shifts, and the mean softmax as log-probabilities."""

from __future__ import annotations

import torch

from seqtrain.models import build_model
from seqtrain.models.averaged import AveragedPredictor, cross_shifts, shift_slots


def test_cross_shifts_lists_the_identity_then_four_directions_per_step():
    assert cross_shifts(0) == [(0, 0)]
    assert cross_shifts(2) == [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1),
                               (-2, 0), (2, 0), (0, -2), (0, 2)]  # fmt: skip


def test_shifts_stay_inside_each_slot_and_leave_empty_slots_empty():
    x = torch.zeros(1, 1, 28, 84)
    x[..., 27] = 1.0  # the last column of slot 1, next to the empty slot 2
    x[..., 5, 30] = 0.5  # one pixel of slot 2
    right = shift_slots(x, 0, 1)
    assert right[..., 28].sum() == 0, "slot 1's edge must not enter slot 2"
    assert right[..., 27].sum() == 0 and right[..., 5, 31] == 0.5
    down = shift_slots(x, 2, 0)
    assert down[..., 7, 30] == 0.5 and down[..., :2, :].sum() == 0
    assert shift_slots(x, -1, -1)[..., 4, 29] == 0.5
    empty = torch.zeros(2, 1, 28, 84)
    assert shift_slots(empty, 1, -1).eq(0).all()
    assert shift_slots(x, 0, 0) is x


def test_one_member_one_view_is_the_models_log_softmax():
    model = build_model("slotnet").eval()
    x = torch.rand(3, 1, 28, 84)
    with torch.no_grad():
        averaged = AveragedPredictor([model], [(0, 0)])(x)
        expected = model(x).log_softmax(-1)
    torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-5)


def test_members_are_averaged_in_probability():
    first, second = build_model("slotnet").eval(), build_model("slotnet").eval()
    x = torch.rand(2, 1, 28, 84)
    with torch.no_grad():
        averaged = AveragedPredictor([first, second], [(0, 0)])(x).exp()
        expected = (first(x).softmax(-1) + second(x).softmax(-1)) / 2
    torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-6)
