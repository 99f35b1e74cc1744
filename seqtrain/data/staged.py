"""Training batches served from device memory (`--stage-on-device`).

At a segment's start the process reads the canonical streams its share of every step covers
(see `seqtrain.data.position`) whole into one uint8 tensor on the device, then serves batches
by indexing that tensor in the planned order: no loader workers, no host-to-device copy per
step, and the same batches as the streaming loader (the same plan, the same windows). Resumes
and resizes work as with the streaming loader.

Across epochs (`StagedEpochs`) the next epoch is read and copied by a background thread while
the current one trains (on a GPU through a stream of its own, which the training stream waits
for only when the epoch starts), so an epoch starts without a gap. The val split is staged once
per run (`staged_eval_batches`): its passes read only device memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch

from seqtrain.config import DataConfig
from seqtrain.data.format import IMAGE_SHAPE, NUM_SLOTS, Manifest
from seqtrain.data.position import EpochPlan, rank_shares
from seqtrain.data.stream import (
    Batch,
    _Piece,
    epoch_sequence,
    read_chunks,
    sample_pieces,
    stream_read,
    total_samples,
)

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


class StagedEpochs:
    """`staged_train_loader` of one rank, epoch after epoch: `read_ahead(plan)` stages a later
    segment in a background thread; `batches(plan)` returns it (waiting for the thread if it is
    not done yet) or stages a segment nobody read ahead on the spot."""

    def __init__(
        self, manifest: Manifest, rank: int, world_size: int, device: torch.device
    ) -> None:
        self.manifest, self.rank, self.world_size, self.device = manifest, rank, world_size, device
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="seqtrain-stage")
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ahead: dict[tuple, Future[StagedBatches]] = {}

    def read_ahead(self, plan: EpochPlan) -> None:
        self._ahead[_key(plan)] = self._thread.submit(self._stage, plan)

    def batches(self, plan: EpochPlan) -> StagedBatches:
        ahead = self._ahead.pop(_key(plan), None)
        staged = ahead.result() if ahead is not None else self._stage(plan)
        if self._stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)  # the copies are done before the first step reads
            for tensor in (staged.images, staged.labels, staged.order):
                tensor.record_stream(current)  # freed memory waits for the training stream too
        return staged

    def _stage(self, plan: EpochPlan) -> StagedBatches:
        with torch.cuda.stream(self._stream) if self._stream is not None else nullcontext():
            return staged_train_loader(self.manifest, plan, self.rank, self.world_size, self.device)


def _key(plan: EpochPlan) -> tuple:
    return plan.seed, plan.epoch, plan.index, plan.skip, plan.steps, plan.layout


class StagedEval:
    """A split's batches of one rank from device tensors: iterable, again and again."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.labels), self.batch_size):
            stop = start + self.batch_size
            yield self.images[start:stop].unsqueeze(1), self.labels[start:stop]


def staged_eval_batches(
    manifest: Manifest,
    cfg: DataConfig,
    split: str,
    rank: int,
    world_size: int,
    device: torch.device,
) -> StagedEval:
    """Rank `rank` of `world_size`'s part of `split` staged on `device`: the batches (uint8
    images [B, 1, 28, 84], labels int64 [B, 3]) `eval_loader` yields, in its order."""
    shards = manifest.shards(split, 0)
    total = total_samples(shards, split)
    start, stop = total * rank // world_size, total * (rank + 1) // world_size
    pieces = sample_pieces(lambda _cycle: shards, total, start, stop - start)
    images, labels = read_into_host(pieces, pinned=device.type == "cuda")
    return StagedEval(
        images.to(device, non_blocking=True),
        labels.to(device, non_blocking=True).long(),
        cfg.eval_batch_size,
    )
