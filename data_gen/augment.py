"""Per-digit random affine jitter, batched: RandomAffine's distribution, one grid_sample.

Parameters follow `RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))`: angle
uniform in [-10, 10] degrees (clockwise, as torchvision's `F.affine`), shift a whole number
of pixels round(U(-2.8, 2.8)) in x and y, scale uniform in [0.9, 1.1], all about the digit's centre.
Sampling is bilinear on float (smoother than RandomAffine's nearest default), rounded to uint8.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

DEGREES = 10.0
TRANSLATE = 0.1
SCALE = (0.9, 1.1)
# Digits warped per grid_sample call: small enough that the float buffers stay in cache and
# come from the allocator's free lists; a whole shard at once page-faults fresh memory each
# time (measured: a third more time, mostly in the kernel).
BLOCK = 512


def random_affine(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Augment uint8 [m, 28, 28] digits, each with its own parameters drawn from `rng`."""
    m, height, width = digits.shape
    angle = rng.uniform(-DEGREES, DEGREES, m)
    shift = np.round(rng.uniform(-TRANSLATE, TRANSLATE, (m, 2)) * (width, height))
    scale = rng.uniform(*SCALE, m)
    return warp(digits, angle, shift, scale)


def warp(digits: np.ndarray, angle: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Rotate `angle` degrees clockwise and scale about the centre, then shift by
    `shift` [m, 2] pixels (x right, y down): torchvision `F.affine` semantics, bilinear."""
    if len(digits) > BLOCK:
        blocks = range(0, len(digits), BLOCK)
        parts = [warp(*(a[i : i + BLOCK] for a in (digits, angle, shift, scale))) for i in blocks]
        return np.concatenate(parts)
    m, height, width = digits.shape
    if m == 0:
        return digits.copy()
    normalised_shift = shift / (width, height) * 2  # grid coordinates span 2 per frame
    theta = torch.from_numpy(_inverse_affine(np.deg2rad(angle), normalised_shift, scale))
    source = torch.from_numpy(digits.astype(np.float32)).unsqueeze(1)
    grid = functional.affine_grid(theta, [m, 1, height, width], align_corners=False)
    warped = functional.grid_sample(source, grid, mode="bilinear", align_corners=False)
    return warped.squeeze(1).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _inverse_affine(angle: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The output->input maps grid_sample needs, in normalised [-1, 1] coordinates (y down).

    Forward: x_out = scale * R(angle) x_in + shift, with R turning clockwise on screen (y down):
    R = [[cos, -sin], [sin, cos]]. Inverse: x_in = R(-angle) (x_out - shift) / scale.
    """
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    linear = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # [m, 2, 2]
    offset = -np.einsum("mij,mj->mi", linear, shift)
    return np.concatenate([linear, offset[:, :, None]], -1).astype(np.float32)
