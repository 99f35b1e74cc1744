"""Synthetic shard sets: small, real shards (the trainer's format, manifest with sha256s) whose
images carry no digits but a unique id in their first four pixels, so a test can check exactly
which samples a loader delivered, and a benchmark can time the loader and the step on a set of
any size without MNIST or the stitching pipeline. Labels are a fixed function of the id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from seqtrain.common.storage import sha256_file
from seqtrain.data.format import (
    BLANK,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_SHAPE,
    MANIFEST_NAME,
    SPLITS,
    shard_bytes,
    shard_relpath,
)


def sample_id(split: str, epoch: int, index: int) -> int:
    """The id written into sample `index` of `split`, generator epoch `epoch`."""
    return SPLITS.index(split) * 10_000_000 + epoch * 100_000 + index


def decode_ids(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Ids of a batch of images [B, 1, 28, 84] or [B, 28, 84] (first 4 pixels, little-endian)."""
    flat = np.asarray(images).reshape(len(images), -1)[:, :4].astype(np.int64)
    return flat[:, 0] | flat[:, 1] << 8 | flat[:, 2] << 16 | flat[:, 3] << 24


def tiny_labels(ids: np.ndarray) -> np.ndarray:
    """Deterministic labels of lengths 1-3 (digits first, then blanks)."""
    labels = np.full((len(ids), 3), BLANK, dtype=np.uint8)
    lengths = ids % 3 + 1
    for slot in range(3):
        digits = (ids // 10**slot) % 10
        labels[:, slot] = np.where(slot < lengths, digits, BLANK)
    return labels


def write_tiny_dataset(
    root: Path,
    sizes: dict[str, list[int]],
    chunk_size: int = 4,
    epochs: int = 1,
) -> Path:
    """Write a shard set under `root`: for each split in `sizes`, one shard per listed sample count
    (train repeats them for each of `epochs` generator epochs; val and test have one), chunks of
    `chunk_size` samples, and its manifest.json; returns `root`. Sample `index` of a split's
    generator epoch holds `sample_id(split, epoch, index)` (see `decode_ids`)."""
    root = Path(root)
    splits = {}
    for split in SPLITS:
        split_epochs = epochs if split == "train" else 1
        entries = []
        for epoch in range(split_epochs):
            index = 0
            for shard, count in enumerate(sizes.get(split, [])):
                ids = np.array([sample_id(split, epoch, index + i) for i in range(count)])
                index += count
                images = np.zeros((count, *IMAGE_SHAPE), dtype=np.uint8)
                images.reshape(count, -1)[:, :4] = ids[:, None] >> np.arange(0, 32, 8) & 0xFF
                path = root / shard_relpath(split, epoch, shard)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(
                    shard_bytes(images, tiny_labels(ids), split, epoch, shard, chunk_size)
                )
                entries.append(
                    {
                        "path": shard_relpath(split, epoch, shard),
                        "epoch": epoch,
                        "count": count,
                        "sha256": sha256_file(path),
                    }
                )
        splits[split] = {"epochs": split_epochs, "shards": entries}
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": {"chunk_size": chunk_size},
        "splits": splits,
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    return root
