"""Which MNIST digits each split draws from: disjoint by construction, fixed by the seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_gen.mnist import Mnist

VAL_DIGITS = 6000
# A constant mixed into the seed so the split permutation never shares a stream with a shard.
_SPLIT_STREAM = 0x5B11


@dataclass(frozen=True)
class DigitPool:
    """The source digits of one split; `index` maps pool positions to MNIST indices."""

    images: np.ndarray  # uint8 [m, 28, 28]
    labels: np.ndarray  # uint8 [m]
    index: np.ndarray  # int64 [m], into MNIST-train (train, val) or MNIST-test (test)


def split_indices(seed: int, num_train_digits: int = 60000) -> dict[str, np.ndarray]:
    """A seeded permutation of MNIST-train: the first 6,000 are val, the rest train."""
    perm = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(num_train_digits)
    return {"train": np.sort(perm[VAL_DIGITS:]), "val": np.sort(perm[:VAL_DIGITS])}


def digit_pools(mnist: Mnist, seed: int) -> dict[str, DigitPool]:
    indices = split_indices(seed, len(mnist.train_images))
    pools = {
        split: DigitPool(mnist.train_images[idx], mnist.train_labels[idx], idx)
        for split, idx in indices.items()
    }
    test_idx = np.arange(len(mnist.test_images))
    pools["test"] = DigitPool(mnist.test_images, mnist.test_labels, test_idx)
    return pools
