"""`--stage-on-device` batches: the loader's batches, in its order, served from a tensor."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch

from seqtrain.data import staged
from seqtrain.data.global_batch import batch_sizes
from seqtrain.data.position import SHARD_ORDER, Position, plan_epoch
from seqtrain.data.staged import staged_train_loader
from seqtrain.data.stream import (
    eval_loader,
    read_chunks,
    sample_pieces,
    shuffled_shard_order,
    train_layout,
    train_steps_per_epoch,
)
from support.loaders import BATCH, check_batch, config, fresh_plan, ids_of, train_batches

CPU = torch.device("cpu")


def staged_config(manifest):
    return replace(config(manifest, 0), stage_on_device=True)


@pytest.mark.parametrize("world_size, global_batch", [(1, None), (2, None), (3, 12), (2, 12)])
def test_each_rank_gets_the_loaders_batches_in_its_order(manifest, world_size, global_batch):
    streamed = config(manifest, 2, shuffle_buffer=12, global_batch=global_batch)
    cfg = replace(streamed, stage_on_device=True)
    steps = train_steps_per_epoch(manifest, batch_sizes(cfg, world_size).global_batch)
    plan = fresh_plan(cfg, 0, steps, world_size, seed=3)
    seen = []
    for rank in range(world_size):
        staged = staged_train_loader(manifest, plan, rank, world_size, CPU)
        batches = list(staged)
        assert len(staged) == len(batches) == steps
        for images, labels in batches:
            check_batch(images, labels, plan.layout.global_batch // world_size)
        ids = ids_of(batches)
        loader = train_batches(manifest, streamed, 0, steps, rank, world_size, 3)
        assert ids == ids_of(loader)  # the same samples in the same steps and order
        seen += ids
    assert len(set(seen)) == len(seen) == steps * plan.layout.global_batch  # each sample once


def test_staged_batches_are_seeded_and_skip_gives_the_tail(manifest):
    def ids(skip: int = 0, seed: int = 5, epoch: int = 0) -> list[int]:
        plan = fresh_plan(staged_config(manifest), epoch, 10, 1, seed, skip)
        return ids_of(staged_train_loader(manifest, plan, 0, 1, CPU))

    full = ids()
    assert ids() == full
    assert ids(skip=4) == full[4 * BATCH :]
    assert ids(seed=6) != full
    assert ids(epoch=1) != full


def test_staging_reads_shards_in_parallel_threads(manifest, monkeypatch):
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


@pytest.mark.parametrize("old, new", [(2, 1), (2, 3), (1, 2)])
def test_staged_resume_on_other_ranks_trains_the_rest_of_the_epoch(manifest, old, new):
    """Staged and resized, from a streamed segment: every sample of the epoch once at most."""
    streamed, staged = config(manifest, 2, shuffle_buffer=12), staged_config(manifest)
    steps = train_steps_per_epoch(manifest, BATCH * old)
    layout = train_layout(streamed, batch_sizes(streamed, old))
    _plan, position = plan_epoch(Position(), 0, layout, 1, steps)
    done = steps // 2
    seen = []
    for rank in range(old):
        seen += ids_of(list(train_batches(manifest, streamed, 0, steps, rank, old, 1))[:done])
    for _ in range(done):
        position = position.after_step()
    rest, _ = plan_epoch(position, 0, train_layout(staged, batch_sizes(staged, new)), 1, steps)
    for rank in range(new):
        seen += ids_of(staged_train_loader(manifest, rest, rank, new, CPU))
    assert len(seen) == len(set(seen))
    assert steps * BATCH * old - len(seen) < BATCH * new


def test_the_next_epoch_is_staged_in_the_background_with_the_same_batches(manifest, monkeypatch):
    cfg = staged_config(manifest)
    plans = [fresh_plan(cfg, epoch, 10, 1, seed=5) for epoch in (0, 1, 2)]
    expected = [ids_of(staged_train_loader(manifest, plan, 0, 1, CPU)) for plan in plans]
    staged_by = []

    def recorded(*args):
        staged_by.append(threading.current_thread().name)
        return staged_train_loader(*args)

    monkeypatch.setattr(staged, "staged_train_loader", recorded)
    epochs = staged.StagedEpochs(manifest, 0, 1, CPU)
    first = epochs.batches(plans[0])  # nobody read it ahead: staged on the spot
    epochs.read_ahead(plans[1])
    second = epochs.batches(plans[1])
    epochs.read_ahead(plans[2])
    assert [ids_of(first), ids_of(second), ids_of(epochs.batches(plans[2]))] == expected
    assert staged_by[0] == threading.current_thread().name
    assert all(name.startswith("seqtrain-stage") for name in staged_by[1:]) and len(staged_by) == 3


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_staged_val_gives_the_eval_loaders_batches(manifest, world_size):
    cfg = config(manifest, 2)
    for rank in range(world_size):
        batches = staged.staged_eval_batches(manifest, cfg, "val", rank, world_size, CPU)
        loader = eval_loader(manifest, cfg, "val", rank, world_size)
        assert len(batches) == len(loader)
        for (images, labels), (want_images, want_labels) in zip(batches, loader, strict=True):
            assert torch.equal(images, want_images) and torch.equal(labels, want_labels)
            assert labels.dtype == torch.int64
