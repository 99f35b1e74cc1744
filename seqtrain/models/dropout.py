"""Dropout whose mask follows the sample, not the process that trains it.

Each row's mask is a counter-based hash of (the row's key, the element's index), computed with
32-bit integer ops on the device (no per-sample loop, no random generator state). The training
loop passes each sample's key (`seqtrain.data.position.sample_keys`: a hash of seed, epoch and
the sample's position in the epoch), so a sample gets the same mask on whichever process, in
whichever micro-batch, it is trained: the layout changes no result. Without keys (a caller that
has none) it is ordinary dropout from torch's generator.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.functional import dropout

_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, constant: int) -> Tensor:
    """x * constant mod 2^32 for 0 <= x < 2^32 in int64, without overflowing it (16-bit halves)."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _M32


def _mix32(x: Tensor) -> Tensor:
    """An avalanching 32-bit integer hash (xor-shift-multiply rounds) of values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _halves(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Non-negative int64 keys as their low 32 and high 31 bits."""
    return keys & _M32, keys >> 32


def child_keys(keys: Tensor, children: int) -> Tensor:
    """Keys for `children` rows made from each key's row (e.g. a sample's three slots), in
    order: [B] -> [B * children], each distinct and again non-negative int64."""
    low, high = _halves(keys)
    index = torch.arange(children, device=keys.device, dtype=torch.int64)
    low = _mix32(low[:, None] ^ _mix32(index + 0x9E3779B9)[None, :])
    return ((high[:, None] << 32) | low).flatten()


def keep_mask(keys: Tensor, elements: int, p: float) -> Tensor:
    """[rows, elements] booleans, each True with probability 1 - p, a pure function of the row's
    key and the element's index."""
    low, high = _halves(keys)
    rows = _mix32(_mix32(low) ^ high)
    index = torch.arange(elements, device=keys.device, dtype=torch.int64)
    drawn = _mix32(rows[:, None] ^ _mix32(index)[None, :])
    return drawn >= round(p * 2**32)


class KeyedDropout(nn.Module):
    """nn.Dropout(p) whose mask for row i is drawn from `keys[i]` (see the module's docstring)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor, keys: Tensor | None = None) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if keys is None:
            return dropout(x, self.p, training=True)
        keep = keep_mask(keys, x.shape[1:].numel(), self.p).view_as(x)
        return x * keep.to(x.dtype) / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
