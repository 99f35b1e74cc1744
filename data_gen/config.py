"""Typed configuration of `seqtrain-data generate`; every field is a flag of the same name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from seqtrain.common.errors import UserError
from seqtrain.common.storage import Location, locate


@dataclass
class GenConfig:
    """Render augmented digit sequences into WebDataset shards under --out."""

    out: str = "data/shards"
    """Output folder or URL (s3://, gs://, file://) for the shards and manifest.json. To a
    store, each shard is rendered in a local temporary folder, then uploaded."""
    mnist_dir: Path | None = None
    """Local MNIST folder: the 4 IDX files (.gz or not) or torchvision's root.
    Default: $SEQTRAIN_MNIST_DIR, else download to --download-dir."""
    download_dir: Path = Path("~/.cache/seqtrain/mnist")
    """Where MNIST is downloaded to when no local folder is given."""
    train_size: int = 54000
    """Training sequences per epoch."""
    val_size: int = 6000
    """Validation sequences (from the 6,000 held-out MNIST-train digits)."""
    test_size: int = 10000
    """Test sequences (from the 10,000 MNIST-test digits)."""
    epochs: int = 20
    """Distinct augmented training epochs to render."""
    shard_size: int = 1000
    """Sequences per shard."""
    chunk_size: int = 256
    """Sequences per tar member (a batch of raw arrays)."""
    length_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Relative frequency of sequence lengths 1, 2, 3."""
    seed: int = 0
    """Seed of the split and of every shard's random stream."""
    workers: int | None = None
    """Worker processes on this machine; default: all cores."""
    num_nodes: int = 1
    """Machines sharing the job; each writes a disjoint set of shards."""
    node_rank: int = 0
    """This machine's index in [0, num_nodes)."""
    overwrite: bool = False
    """Allow replacing a folder generated with a different config."""

    def __post_init__(self) -> None:
        locate(self.out)  # an unknown URL scheme fails here, naming it
        for flag, value in [
            ("--train-size", self.train_size),
            ("--val-size", self.val_size),
            ("--test-size", self.test_size),
            ("--epochs", self.epochs),
            ("--shard-size", self.shard_size),
            ("--chunk-size", self.chunk_size),
            ("--num-nodes", self.num_nodes),
        ]:
            if value <= 0:
                raise UserError(f"{flag} must be > 0, got {value}")
        if self.workers is not None and self.workers <= 0:
            raise UserError(f"--workers must be > 0, got {self.workers}")
        if not 0 <= self.node_rank < self.num_nodes:
            raise UserError(f"--node-rank must be in [0, {self.num_nodes}), got {self.node_rank}")
        if any(w < 0 for w in self.length_weights) or sum(self.length_weights) <= 0:
            raise UserError("--length-weights must be >= 0 and sum to a positive number")

    @property
    def location(self) -> Location:
        """--out as a local folder (`Path`) or a store URL (`str`)."""
        return locate(self.out)

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1
