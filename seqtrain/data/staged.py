"""Training batches served from device memory (`--stage-on-device`).

At a segment's start the process reads its share of the epoch's samples (the positions the
segment's plan deals it, see `seqtrain.data.position`; its layout has one stream whose whole
run is one shuffle window) into one uint8 tensor on the device, then serves batches by
indexing that tensor in the planned order: no loader workers, no host-to-device copy per step,
a full shuffle of the rank's run instead of a shuffle buffer. Resumes and resizes work as with
the streaming loader, from the same plan.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from seqtrain.data.format import Manifest
from seqtrain.data.position import EpochPlan
from seqtrain.data.stream import Batch, epoch_sequence, read_chunks, stream_read


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
    chunks = list(read_chunks(read.pieces))
    images = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros((0, 28, 84), np.uint8)
    labels = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0, 3), np.uint8)
    if read.keep is not None:
        images, labels = images[read.keep], labels[read.keep]
    order = torch.from_numpy(stream.batch_order()).to(device)
    return StagedBatches(
        torch.from_numpy(images).to(device),
        torch.from_numpy(labels).to(device),
        order,
        layout.batch_size,
        plan.skip,
    )
