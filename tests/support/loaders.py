"""Loader tests' shared parts: a tiny id-encoded shard set (7 uneven train shards), its data
config, a fresh epoch plan, and the check that a batch's images and labels stayed paired."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from data_gen.synthetic import decode_ids, tiny_labels, write_tiny_dataset
from seqtrain.config import DataConfig
from seqtrain.data.format import Manifest, load_manifest
from seqtrain.data.global_batch import batch_sizes
from seqtrain.data.position import EpochPlan, Position, plan_epoch
from seqtrain.data.stream import train_layout, train_loader

TRAIN_SHARDS = [10, 3, 17, 8, 12, 5, 9]  # 64 samples, 7 uneven shards
VAL_SHARDS = [7, 6]  # fewer shards than most rank x worker layouts
BATCH = 4  # per process (--batch-size)


def loader_manifest(root: Path) -> Manifest:
    """TRAIN_SHARDS (2 generator epochs), VAL_SHARDS and one test shard, chunks of 4, in `root`."""
    write_tiny_dataset(
        root, {"train": TRAIN_SHARDS, "val": VAL_SHARDS, "test": [5]}, chunk_size=4, epochs=2
    )
    return load_manifest(root)


def config(
    manifest: Manifest, num_workers: int, shuffle_buffer: int = 8, global_batch: int | None = None
) -> DataConfig:
    """BATCH per process, or `global_batch` over all processes."""
    return DataConfig(
        shards=manifest.root,
        batch_size=BATCH,
        global_batch_size=global_batch,
        eval_batch_size=5,
        num_workers=num_workers,
        shuffle_buffer=shuffle_buffer,
    )


def fresh_plan(
    cfg: DataConfig, epoch: int, steps: int, world_size: int, seed: int, skip: int = 0
) -> EpochPlan:
    """The plan of a fresh epoch of `steps` global steps, resumed after `skip` of them."""
    layout = train_layout(cfg, batch_sizes(cfg, world_size))
    plan, _ = plan_epoch(Position(), epoch, layout, seed, steps)
    return replace(plan, skip=skip)


def train_batches(
    manifest, cfg, epoch: int, steps: int, rank: int, world_size: int, seed: int, skip: int = 0
):
    """`train_loader` of rank `rank` in a fresh epoch of `steps` steps (from `skip` on)."""
    plan = fresh_plan(cfg, epoch, steps, world_size, seed, skip)
    return train_loader(manifest, cfg, plan, rank, world_size)


def ids_of(batches) -> list[int]:
    return [int(i) for images, _ in batches for i in decode_ids(images)]


def check_batch(images: torch.Tensor, labels: torch.Tensor, size: int) -> None:
    assert images.shape == (size, 1, 28, 84) and images.dtype == torch.uint8
    assert labels.shape == (size, 3) and labels.dtype == torch.int64
    # Images and labels stay paired through the shuffle.
    expected = tiny_labels(decode_ids(images)).astype(np.int64)
    assert torch.equal(labels, torch.from_numpy(expected))
