"""Training batches served from device memory (`--stage-on-device`).

At a segment's start the process reads its share of the epoch's samples (the positions the
segment's plan deals it, see `seqtrain.data.position`; its layout has one stream whose whole
run is one shuffle window) into one uint8 tensor on the device, then serves batches by
indexing that tensor in the planned order: no loader workers, no host-to-device copy per step,
a full shuffle of the rank's run instead of a shuffle buffer. Resumes and resizes work as with
the streaming loader, from the same plan.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from seqtrain.data.format import IMAGE_SHAPE, NUM_SLOTS, Manifest
from seqtrain.data.position import EpochPlan
from seqtrain.data.stream import Batch, _Piece, epoch_sequence, read_chunks, stream_read

READ_THREADS = 8  # shards read at once while staging an epoch


class StagedBatches:
    """One segment of a rank's training batches from a device tensor: iterable, with a length."""

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
    manifest: Manifest, plan: EpochPlan, rank: int, device: torch.device
) -> StagedBatches:
    """Rank `rank`'s batches of the segment `plan` (from `plan.skip` on), staged on `device`:
    images uint8 [B, 1, 28, 84] and labels int64 [B, 3], already on the device."""
    layout = plan.layout
    if layout.streams != 1 or layout.window != 0:
        raise ValueError(f"staged batches need one stream, one window per run, not {layout}")
    (stream,) = plan.streams(rank)
    read = stream_read(epoch_sequence(manifest, plan.seed, plan.epoch), stream, 1, skip=0)
    images, labels = read_into_host(read.pieces, pinned=device.type == "cuda")
    if read.keep is not None:  # holes: samples trained in an earlier segment
        keep = torch.from_numpy(read.keep)
        images, labels = images[keep], labels[keep]
    order = torch.from_numpy(stream.batch_order()).to(device)
    # From pinned memory the copies run asynchronously: the first steps queue behind them.
    return StagedBatches(
        images.to(device, non_blocking=True),
        labels.to(device, non_blocking=True),
        order,
        layout.batch_size,
        plan.skip,
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
