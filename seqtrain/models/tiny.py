"""A few-thousand-parameter model with the reference's input and output, for fast tests."""

from __future__ import annotations

from torch import Tensor, nn

from seqtrain.models.heads import SlotHeads


class TinyNet(nn.Module):
    """One strided conv and pooling to a 4x12 map, then the three slot heads."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),  # 28x84 -> 14x42
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((2, 6)),  # keeps coarse horizontal position: which slot
            nn.Flatten(),
        )
        self.heads = SlotHeads(8 * 2 * 6)

    def forward(self, x: Tensor, keys: Tensor | None = None) -> Tensor:
        """`keys` (dropout keys, see `KeyedDropout`) are accepted as by every model, unused."""
        return self.heads(self.features(x))
