"""Augmentation: torchvision RandomAffine semantics, exact where exactness is expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf

from data_gen.augment import random_affine, warp
from data_gen.mnist import load_mnist


@pytest.fixture(scope="module")
def digits(mnist_dir) -> np.ndarray:
    return load_mnist(mnist_dir, mnist_dir).test_images[:64]


@pytest.mark.parametrize(
    ("angle", "shift", "scale"),
    [(0.0, (0, 0), 1.0), (7.5, (2, -3), 1.0), (-10.0, (-1, 1), 0.9), (4.0, (3, 0), 1.1)],
)
def test_warp_matches_torchvision_affine(digits, angle, shift, scale):
    """Same angle/translate/scale convention as torchvision's F.affine (bilinear, on float)."""
    ours = warp(digits[:8], np.full(8, angle), np.tile(shift, (8, 1)), np.full(8, scale))
    source = torch.tensor(digits[:8], dtype=torch.float32).unsqueeze(1)
    theirs = tvf.affine(
        source, angle, list(shift), scale, [0.0, 0.0], InterpolationMode.BILINEAR
    ).squeeze(1)
    diff = np.abs(ours.astype(int) - theirs.round().clamp(0, 255).numpy().astype(int))
    assert diff.max() <= 1  # float rounding at .5 only


def test_warp_shift_and_quarter_turn_are_exact(digits):
    shifted = warp(digits[:4], np.zeros(4), np.tile((2, 0), (4, 1)), np.ones(4))
    np.testing.assert_array_equal(shifted[:, :, 2:], digits[:4, :, :-2])
    turned = warp(digits[:4], np.full(4, 90.0), np.zeros((4, 2)), np.ones(4))
    np.testing.assert_array_equal(turned, np.rot90(digits[:4], k=-1, axes=(1, 2)))  # clockwise


def test_random_affine_is_seeded_and_keeps_the_digit(digits):
    first = random_affine(digits, np.random.default_rng(3))
    np.testing.assert_array_equal(first, random_affine(digits, np.random.default_rng(3)))
    assert first.dtype == np.uint8 and first.shape == digits.shape
    changed = (first != digits).reshape(len(digits), -1).any(axis=1)
    assert changed.mean() > 0.9
    mass = first.reshape(len(digits), -1).sum(1) / digits.reshape(len(digits), -1).sum(1)
    assert np.all((mass > 0.7) & (mass < 1.4))  # scale 0.9-1.1 changes area by 0.81-1.21
