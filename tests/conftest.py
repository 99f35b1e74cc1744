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


def tiny_generate_argv(mnist_dir: Path, out: Path, workers: int = 1) -> list[str]:
    """`generate` of a tiny set: shard counts uneven vs ranks x workers, a short last shard."""
    return [
        "generate",
        "--mnist-dir", str(mnist_dir),
        "--out", str(out),
        "--train-size", "600",
        "--val-size", "250",
        "--test-size", "250",
        "--epochs", "2",
        "--shard-size", "100",
        "--chunk-size", "32",
        "--workers", str(workers),
        "--seed", "0",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_shards(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated, finalized tiny shard folder shared by the whole session: treat as read-only."""
    from data_gen.cli import main

    out = tmp_path_factory.mktemp("tiny_shards")
    main(tiny_generate_argv(mnist_dir, out))
    return out
