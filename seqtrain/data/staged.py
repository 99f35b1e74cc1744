"""Training batches served from device memory (`--stage-on-device`).

At an epoch's start the process reads its share of the epoch's samples, the very samples
`train_loader` would give it (the same plan: seeded shard order, contiguous run of
`steps * batch_size` samples per rank), into one uint8 tensor on the device, then serves
batches by indexing that tensor with a seeded permutation: no loader workers, no host-to-device
copy per step, a full shuffle of the epoch instead of a shuffle buffer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from seqtrain.data.format import IMAGE_SHAPE, NUM_SLOTS, Manifest
from seqtrain.data.stream import (
    SAMPLE_ORDER,
    SHARD_ORDER,
    Batch,
    _Piece,
    generator_epoch,
    read_chunks,
    sample_pieces,
    shuffled_shard_order,
    total_samples,
)

READ_THREADS = 8  # shards read at once while staging an epoch


class StagedBatches:
    """One epoch of a rank's training batches from a device tensor: iterable, with a length."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        order: torch.Tensor,
        batch_size: int,
        skip_batches: int,
    ) -> None:
        self.images, self.labels, self.order = images, labels, order
        self.batch_size = batch_size
        self.skip = skip_batches

    def __len__(self) -> int:
        return len(self.order) // self.batch_size - self.skip

    def __iter__(self) -> Iterator[Batch]:
        for index in range(self.skip, self.skip + len(self)):
            chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
            yield self.images[chosen].unsqueeze(1), self.labels[chosen].long()


def staged_train_loader(
    manifest: Manifest,
    batch_size: int,
    epoch: int,
    steps: int,
    rank: int,
    seed: int,
    device: torch.device,
    skip_batches: int = 0,
) -> StagedBatches:
    """This rank's `steps` training batches of `epoch` (from `skip_batches` on), staged on
    `device`: images uint8 [B, 1, 28, 84] and labels int64 [B, 3], already on the device."""
    if not 0 <= skip_batches <= steps:
        raise ValueError(f"skip_batches={skip_batches} is outside [0, steps={steps}]")
    shards = manifest.shards("train", generator_epoch(manifest, epoch))
    order = partial(shuffled_shard_order, shards, (seed, epoch, SHARD_ORDER))
    length = steps * batch_size
    pieces = sample_pieces(order, total_samples(shards, "train"), rank * length, length)
    images, labels = read_into_host(pieces, pinned=device.type == "cuda")
    # From pinned memory the copies run asynchronously: the first steps queue behind them.
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    permutation = np.random.default_rng([seed, epoch, SAMPLE_ORDER, rank]).permutation(length)
    return StagedBatches(
        images, labels, torch.from_numpy(permutation).to(device), batch_size, skip_batches
    )


def read_into_host(pieces: list[_Piece], pinned: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The pieces' samples in order, as uint8 images [n, 28, 84] and labels [n, 3], read by
    several threads (file reads and array copies release the GIL), each piece straight into
    its slice of one host buffer, pinned for an asynchronous copy to a CUDA device."""
    sizes = [piece.stop - piece.start for piece in pieces]
    starts = np.cumsum([0, *sizes[:-1]])
    total = sum(sizes)
    images = torch.empty((total, *IMAGE_SHAPE), dtype=torch.uint8, pin_memory=pinned)
    labels = torch.empty((total, NUM_SLOTS), dtype=torch.uint8, pin_memory=pinned)
    image_rows, label_rows = images.numpy(), labels.numpy()

    def read(piece: _Piece, start: int) -> None:
        for chunk_images, chunk_labels in read_chunks([piece]):
            stop = start + len(chunk_images)
            image_rows[start:stop], label_rows[start:stop] = chunk_images, chunk_labels
            start = stop

    threads = max(1, min(len(pieces), READ_THREADS, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read, pieces, starts.tolist()))  # re-raises a thread's error (UserError)
    return images, labels
