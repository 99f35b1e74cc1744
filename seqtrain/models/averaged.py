"""Prediction averaged over trained models (an ensemble) and over shifted views (test-time
augmentation): the mean of the softmax probabilities, returned as log-probabilities so that
argmax and cross-entropy read it like any model's logits.

Shifts move each 28x28 slot's content within its own slot, filling with black: a shift of the
whole 28x84 image would carry the edge of one digit into its neighbour's slot, and an empty slot
stays empty (so `slotnet_deep_skipblank` still skips it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqtrain.data.format import DIGIT_SIZE, NUM_SLOTS


def cross_shifts(pixels: int) -> list[tuple[int, int]]:
    """(dy, dx) views: the identity, then 1..`pixels` pixels up, down, left and right."""
    views = [(0, 0)]
    for step in range(1, pixels + 1):
        views += [(-step, 0), (step, 0), (0, -step), (0, step)]
    return views


def shift_slots(x: Tensor, dy: int, dx: int) -> Tensor:
    """[B, C, 28, 84] with every slot's content moved dy rows down and dx columns right."""
    if dy == 0 and dx == 0:
        return x
    slots = x.unflatten(3, (NUM_SLOTS, DIGIT_SIZE))  # [B, C, 28, 3, 28]
    out = torch.zeros_like(slots)
    rows_to, rows_from = _span(dy), _span(-dy)
    cols_to, cols_from = _span(dx), _span(-dx)
    out[:, :, rows_to, :, cols_to] = slots[:, :, rows_from, :, cols_from]
    return out.flatten(3)


def _span(offset: int) -> slice:
    """The indices along one 28-pixel axis that receive content moved by `offset`."""
    return slice(max(offset, 0), DIGIT_SIZE + min(offset, 0))


class AveragedPredictor(nn.Module):
    """Mean softmax of `members` over the `views` (see `cross_shifts`), as log-probabilities."""

    def __init__(self, members: list[nn.Module], views: list[tuple[int, int]]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.views = views

    def forward(self, x: Tensor) -> Tensor:
        probs = sum(
            member(shift_slots(x, dy, dx)).float().softmax(-1)
            for member in self.members
            for dy, dx in self.views
        )
        return (probs / (len(self.members) * len(self.views))).clamp_min(1e-30).log()
