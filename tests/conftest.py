"""Shared fixtures: the offline MNIST copy and tiny generated shard sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """MNIST IDX files: $SEQTRAIN_MNIST_DIR, else ../shared/mnist beside the checkout."""
    path = Path(os.environ.get("SEQTRAIN_MNIST_DIR", REPO.parent / "shared" / "mnist"))
    if (
        not (path / "train-images-idx3-ubyte.gz").exists()
        and not (path / "train-images-idx3-ubyte").exists()
    ):
        pytest.fail(f"MNIST not found in {path}: set SEQTRAIN_MNIST_DIR")
    return path
