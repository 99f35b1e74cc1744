"""Output layer shared by every architecture: one linear classifier per sequence slot."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqtrain.data.format import NUM_CLASSES, NUM_SLOTS


class SlotHeads(nn.Module):
    """`NUM_SLOTS` parallel linear heads over one feature vector: [B, F] -> logits [B, 3, 11]."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(features, NUM_CLASSES) for _ in range(NUM_SLOTS))

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([head(x) for head in self.heads], dim=1)
