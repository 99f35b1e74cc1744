"""The reference network: four conv blocks, one hidden layer, three parallel heads."""

from __future__ import annotations

from torch import Tensor, nn

from seqtrain.models.dropout import KeyedDropout
from seqtrain.models.heads import SlotHeads


class ReferenceNet(nn.Module):
    """Exactly the reference architecture (4,337,441 parameters).

    Input float [B, 1, 28, 84] in [0, 1] and, in training, each sample's dropout key (see
    `KeyedDropout`); output logits [B, 3, 11].
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 28x84 -> 14x42
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 7x21
            nn.Conv2d(128, 256, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 3x10
            nn.Flatten(),
        )
        self.hidden = nn.Sequential(nn.Linear(256 * 3 * 10, 512), nn.ReLU())
        self.dropout = KeyedDropout(0.5)
        self.heads = SlotHeads(512)

    def forward(self, x: Tensor, keys: Tensor | None = None) -> Tensor:
        return self.heads(self.dropout(self.hidden(self.features(x)), keys))
