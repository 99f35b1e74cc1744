"""Training batches served from device memory (`--stage-on-device`).

At a segment's start the process reads the canonical streams its share of every step covers
(see `seqtrain.data.position`) whole into one uint8 tensor on the device, then serves batches
by indexing that tensor in the planned order: no loader workers, no host-to-device copy per
step, and the same batches as the streaming loader (the same plan, the same windows). Resumes
and resizes work as with the streaming loader.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from seqtrain.data.format import IMAGE_SHAPE, NUM_SLOTS, Manifest
from seqtrain.data.position import EpochPlan, rank_shares
from seqtrain.data.stream import Batch, _Piece, epoch_sequence, read_chunks, stream_read

READ_THREADS = 8  # shards read at once while staging an epoch


class StagedBatches:
    """One segment of a rank's training batches from a device tensor: iterable, with a length."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, skip: int
    ) -> None:
        self.images, self.labels = images, labels
        self.order = order  # [steps, batch]: indices into images/labels
        self.skip = skip

    def __len__(self) -> int:
        return len(self.order) - self.skip

    def __iter__(self) -> Iterator[Batch]:
        for chosen in self.order[self.skip :]:
            yield self.images[chosen].unsqueeze(1), self.labels[chosen].long()


def staged_train_loader(
    manifest: Manifest, plan: EpochPlan, rank: int, world_size: int, device: torch.device
) -> StagedBatches:
    """Rank `rank` of `world_size`'s batches of the segment `plan` (from `plan.skip` on), staged
    on `device`: images uint8 [B, 1, 28, 84] and labels int64 [B, 3], already on the device,
    the batches `train_loader` yields."""
    sequence = epoch_sequence(manifest, plan.seed, plan.epoch)
    steps, chunk = plan.steps, plan.layout.chunk
    pieces, keeps, columns = [], [], []
    staged = 0  # samples staged before the current stream
    for share in rank_shares(plan.layout, rank, world_size):
        stream = plan.stream(share.stream)
        read = stream_read(sequence, stream, chunk, skip=0)
        pieces += read.pieces
        # Holes (samples trained in an earlier segment) are read over, then dropped.
        keeps.append(np.ones(_length(read.pieces), bool) if read.keep is None else read.keep)
        order = stream.batch_order().reshape(steps, chunk)[:, share.lo : share.hi]
        columns.append(order + staged)
        staged += len(stream.positions)
    images, labels = read_into_host(pieces, pinned=device.type == "cuda")
    keep = np.concatenate(keeps)
    if not keep.all():
        images, labels = images[torch.from_numpy(keep)], labels[torch.from_numpy(keep)]
    order = torch.from_numpy(np.concatenate(columns, axis=1)).to(device)
    # From pinned memory the copies run asynchronously: the first steps queue behind them.
    return StagedBatches(
        images.to(device, non_blocking=True),
        labels.to(device, non_blocking=True),
        order,
        plan.skip,
    )


def _length(pieces: list[_Piece]) -> int:
    return sum(piece.stop - piece.start for piece in pieces)


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
