"""Compose digit sequences: 1-3 digits side by side in a 28x84 image, empty slots black."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_gen.augment import random_affine
from data_gen.splits import DigitPool
from seqtrain.data.format import BLANK, DIGIT_SIZE, NUM_SLOTS

NO_SOURCE = -1


@dataclass(frozen=True)
class Sequences:
    images: np.ndarray  # uint8 [n, 28, 84]; slot i = columns [28i, 28i+28)
    labels: np.ndarray  # uint8 [n, 3]; BLANK for an empty slot
    sources: np.ndarray  # int64 [n, 3]; MNIST index of each slot's digit, NO_SOURCE if blank


def compose(
    pool: DigitPool,
    n: int,
    length_weights: tuple[float, ...],
    rng: np.random.Generator,
    augment: bool,
) -> Sequences:
    """Draw n sequences from `pool`; only the digits actually shown are augmented."""
    weights = np.asarray(length_weights, dtype=np.float64)
    lengths = rng.choice(NUM_SLOTS, size=n, p=weights / weights.sum()) + 1
    picks = rng.integers(0, len(pool.labels), size=(n, NUM_SLOTS))
    shown = np.arange(NUM_SLOTS)[None, :] < lengths[:, None]
    chosen = picks[shown]
    digits = pool.images[chosen]
    if augment:
        digits = random_affine(digits, rng)

    slots = np.zeros((n, NUM_SLOTS, DIGIT_SIZE, DIGIT_SIZE), dtype=np.uint8)
    slots[shown] = digits
    # [n, slot, row, col] -> [n, row, slot, col] -> [n, 28, 84]: slot i fills columns [28i, 28i+28).
    images = slots.transpose(0, 2, 1, 3).reshape(n, DIGIT_SIZE, NUM_SLOTS * DIGIT_SIZE)
    labels = np.full((n, NUM_SLOTS), BLANK, dtype=np.uint8)
    labels[shown] = pool.labels[chosen]
    sources = np.full((n, NUM_SLOTS), NO_SOURCE, dtype=np.int64)
    sources[shown] = pool.index[chosen]
    return Sequences(images, labels, sources)
