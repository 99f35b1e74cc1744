"""`--stage-on-device` batches: the loader's samples per rank and steps, served from a tensor."""

from __future__ import annotations

import threading
import time
from functools import partial

import numpy as np
import pytest
import torch
from test_stream import BATCH, check_batch, config, ids_of, manifest  # noqa: F401 (fixture)

from seqtrain.data import staged
from seqtrain.data.staged import staged_train_loader
from seqtrain.data.stream import (
    SHARD_ORDER,
    read_chunks,
    sample_pieces,
    shuffled_shard_order,
    train_loader,
    train_steps_per_epoch,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_rank_gets_the_loaders_samples_in_the_same_steps(manifest, world_size):  # noqa: F811
    steps = train_steps_per_epoch(manifest, BATCH, world_size)
    seen = []
    for rank in range(world_size):
        staged = staged_train_loader(manifest, BATCH, 0, steps, rank, seed=3, device=CPU)
        batches = list(staged)
        assert len(staged) == len(batches) == steps
        for images, labels in batches:
            check_batch(images, labels, BATCH)
        ids = ids_of(batches)
        streamed = train_loader(manifest, config(manifest, 0), 0, steps, rank, world_size, seed=3)
        assert sorted(ids) == sorted(ids_of(streamed))  # the same samples, reshuffled
        seen += ids
    assert len(set(seen)) == len(seen) == steps * BATCH * world_size  # each sample once


def test_staged_batches_are_seeded_and_skip_gives_the_tail(manifest):  # noqa: F811
    def ids(skip: int = 0, seed: int = 5, epoch: int = 0) -> list[int]:
        batches = staged_train_loader(manifest, BATCH, epoch, 10, 0, seed, CPU, skip)
        return ids_of(batches)

    full = ids()
    assert ids() == full
    assert ids(skip=4) == full[4 * BATCH :]
    assert ids(seed=6) != full
    assert ids(epoch=1) != full


def test_staging_reads_shards_in_parallel_threads(manifest, monkeypatch):  # noqa: F811
    readers = set()

    def recording(pieces):
        readers.add(threading.get_ident())
        time.sleep(0.05)  # long enough for the pool to hand the next piece to another thread
        yield from read_chunks(pieces)

    monkeypatch.setattr(staged, "read_chunks", recording)
    shards = manifest.shards("train", 0)
    order = partial(shuffled_shard_order, shards, (0, 0, SHARD_ORDER))
    pieces = sample_pieces(order, sum(s.count for s in shards), 3, 5 * BATCH)
    images, labels = staged.read_into_host(pieces, pinned=False)
    expected = list(read_chunks(pieces))
    assert np.array_equal(images.numpy(), np.concatenate([c[0] for c in expected]))
    assert np.array_equal(labels.numpy(), np.concatenate([c[1] for c in expected]))
    assert len(readers) > 1
