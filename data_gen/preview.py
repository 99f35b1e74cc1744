"""`seqtrain-data preview OUT`: a PNG grid of the first samples of a split, labels as titles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from seqtrain.common.atomic import atomic_open
from seqtrain.common.errors import UserError
from seqtrain.common.storage import open_shard
from seqtrain.data.format import SPLITS, iter_shard_chunks, load_manifest, sequence_text

_COLUMNS = 4


@dataclass
class PreviewConfig:
    """Draw the first samples of a split with their labels."""

    out: tyro.conf.Positional[str]
    """The generated data folder or URL (s3://, gs://, http(s)://, file://)."""
    split: str = "train"
    """train, val or test."""
    num: Annotated[int, tyro.conf.arg(aliases=("-n",))] = 16
    """How many samples to draw."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("preview.png")
    """The PNG to write."""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.num <= 0:
            raise UserError(f"-n must be > 0, got {self.num}")


def first_samples(out: str | Path, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to n (image, label) pairs from the split's first shards, in order."""
    images, labels = [], []
    for shard in load_manifest(out).shards(split, 0):
        with open_shard(shard.path, shard.sha256) as stream:
            for _, chunk_images, chunk_labels in iter_shard_chunks(stream):
                images.append(chunk_images)
                labels.append(chunk_labels)
                if sum(map(len, images)) >= n:
                    return np.concatenate(images)[:n], np.concatenate(labels)[:n]
    return np.concatenate(images)[:n], np.concatenate(labels)[:n]


def preview(cfg: PreviewConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    try:
        images, labels = first_samples(cfg.out, cfg.split, cfg.num)
    except ValueError as e:
        raise UserError(f"cannot read {cfg.split} shards: {e} (run verify)") from None
    if len(images) == 0:
        raise UserError(f"split {cfg.split} of {cfg.out} has no samples")
    rows = math.ceil(len(images) / _COLUMNS)
    fig, axes = plt.subplots(rows, _COLUMNS, figsize=(2.4 * _COLUMNS, 1.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(sequence_text(label) or "(empty)", fontsize=9)
    fig.tight_layout()
    try:
        with atomic_open(cfg.output, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    except OSError as e:
        raise UserError(f"cannot write {cfg.output}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    print(f"wrote {cfg.output}: {len(images)} {cfg.split} samples")
