"""Train and eval loaders: equal steps on every rank, exact coverage, determinism, bad shards."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from data_gen.synthetic import sample_id, write_tiny_dataset
from seqtrain.common.errors import UserError
from seqtrain.config import DataConfig
from seqtrain.data.format import load_manifest
from seqtrain.data.global_batch import batch_sizes
from seqtrain.data.position import Position, plan_epoch
from seqtrain.data.stream import (
    eval_loader,
    images_to_float,
    train_layout,
    train_loader,
    train_steps_per_epoch,
)
from support.loaders import (
    BATCH,
    TRAIN_SHARDS,
    VAL_SHARDS,
    check_batch,
    config,
    fresh_plan,
    ids_of,
    train_batches,
)


@pytest.mark.parametrize("world_size, num_workers", [(1, 0), (2, 2), (3, 2)])
def test_every_rank_gets_exactly_steps_batches_and_the_epoch_reads_each_sample_once(
    manifest, world_size, num_workers
):
    cfg = config(manifest, num_workers)
    steps = train_steps_per_epoch(manifest, BATCH * world_size)
    assert steps == sum(TRAIN_SHARDS) // (BATCH * world_size)
    seen = []
    for rank in range(world_size):
        batches = list(train_batches(manifest, cfg, 0, steps, rank, world_size, seed=3))
        assert len(batches) == steps
        for images, labels in batches:
            check_batch(images, labels, BATCH)
        seen += ids_of(batches)
    epoch_ids = {sample_id("train", 0, i) for i in range(sum(TRAIN_SHARDS))}
    assert len(set(seen)) == len(seen) == steps * BATCH * world_size
    assert set(seen) <= epoch_ids
    assert len(epoch_ids) - len(seen) < BATCH * world_size  # less than one global batch lost


def test_more_steps_than_data_repeats_the_data_without_hanging(manifest):
    cfg = config(manifest, num_workers=2)
    seen = []
    for rank in range(3):
        batches = list(train_batches(manifest, cfg, 0, 25, rank, 3, seed=0))
        assert len(batches) == 25
        seen += ids_of(batches)
    # 25 * 4 * 3 = 300 samples: each of the 64 read 4 or 5 times.
    assert sorted(Counter(seen).values())[::63] == [4, 5] and len(set(seen)) == 64


def test_a_single_shard_feeds_many_ranks_and_workers(tmp_path):
    manifest = load_manifest(write_tiny_dataset(tmp_path, {"train": [30], "val": [1]}))
    cfg = config(manifest, num_workers=2)
    seen = []
    for rank in range(3):
        batches = list(train_batches(manifest, cfg, 0, 2, rank, 3, seed=0))
        assert len(batches) == 2
        seen += ids_of(batches)
    assert len(set(seen)) == len(seen) == 24


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_arguments_same_batches_and_skip_gives_the_tail(manifest, num_workers):
    cfg = config(manifest, num_workers)
    steps = 7

    def run(skip: int = 0, seed: int = 5, epoch: int = 0) -> list[list[int]]:
        batches = train_batches(manifest, cfg, epoch, steps, 1, 2, seed=seed, skip=skip)
        assert len(batches) == steps - skip
        return [ids_of([batch]) for batch in batches]

    full = run()
    assert run() == full
    for skip in (1, 2, 3, 6, 7):
        assert run(skip) == full[skip:]
    assert run(seed=6) != full
    assert run(epoch=2) != full  # same generator epoch as 0, other shuffle


def test_training_epochs_wrap_around_the_generator_epochs(manifest):
    cfg = config(manifest, num_workers=0)
    for epoch, generator_epoch in [(0, 0), (1, 1), (2, 0), (5, 1)]:
        ids = ids_of(train_batches(manifest, cfg, epoch, 16, 0, 1, seed=0))
        expected = {sample_id("train", generator_epoch, i) for i in range(64)}
        assert set(ids) == expected


def test_shuffling_mixes_shards_and_positions(manifest):
    cfg = config(manifest, num_workers=0, shuffle_buffer=64)
    ids = ids_of(train_batches(manifest, cfg, 0, 16, 0, 1, seed=0))
    assert ids != sorted(ids)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 20])
def test_eval_reads_every_sample_exactly_once_across_ranks(manifest, world_size, num_workers):
    cfg = config(manifest, num_workers)
    seen = []
    for rank in range(world_size):
        batches = eval_loader(manifest, cfg, "val", rank, world_size)
        sizes = [len(labels) for _, labels in batches]
        assert len(sizes) == len(batches)
        assert all(size == 5 for size in sizes[:-1])  # only the last batch may be short
        for images, labels in batches:
            check_batch(images, labels, len(labels))
        seen += ids_of(batches)
    assert sorted(seen) == [sample_id("val", 0, i) for i in range(sum(VAL_SHARDS))]


def test_a_rank_without_samples_gets_a_valid_empty_loader(manifest):
    # 5 test samples over 8 ranks: rank 0 gets none.
    batches = eval_loader(manifest, config(manifest, 2), "test", 0, 8)
    assert len(batches) == 0 and list(batches) == []


def test_images_to_float_scales_to_unit_range():
    images = torch.tensor([[0, 128, 255]], dtype=torch.uint8)
    out = images_to_float(images)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[0.0, 128 / 255, 1.0]]))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_a_bad_shard_is_a_one_line_user_error_naming_it(tmp_path, num_workers, damage):
    manifest = load_manifest(write_tiny_dataset(tmp_path, {"train": [12, 12], "val": [4]}))
    shard = manifest.shards("train", 0)[1].path
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2 + 100])
    elif damage == "garbage":
        shard.write_bytes(data[:512] + b"\x07" * (len(data) - 512))
    else:
        shard.unlink()
    with pytest.raises(UserError, match=shard.name) as info:
        list(train_batches(manifest, config(manifest, num_workers), 0, 6, 0, 1, seed=0))
    assert "\n" not in str(info.value)


def trained_ids(manifest, cfg, plan, world_size: int, steps: int | None = None) -> list[int]:
    """Ids every rank's loader delivers in the plan's global steps from `plan.skip` to `steps`."""
    stop = plan.steps if steps is None else steps
    ids = []
    for rank in range(world_size):
        batches = list(train_loader(manifest, cfg, plan, rank, world_size))[: stop - plan.skip]
        assert all(len(labels) == plan.layout.global_batch // world_size for _, labels in batches)
        ids += ids_of(batches)
    return ids


def layout(cfg, world_size: int):
    return train_layout(cfg, batch_sizes(cfg, world_size))


def global_batches(manifest, cfg, steps: int, world_size: int, skip: int = 0) -> list[list[int]]:
    """Each global step's sample ids: the ranks' batches of the step joined in rank order."""
    plan = fresh_plan(cfg, 1, steps, world_size, seed=5, skip=skip)
    ranks = [list(train_loader(manifest, cfg, plan, r, world_size)) for r in range(world_size)]
    for batches in ranks:
        assert len(batches) == steps - skip
        for images, labels in batches:
            check_batch(images, labels, plan.layout.global_batch // world_size)
    return [ids_of(step) for step in zip(*ranks, strict=True)]


@pytest.mark.parametrize("world_size", [2, 3, 12])
@pytest.mark.parametrize("num_workers", [0, 3])
def test_a_global_batch_trains_the_same_samples_on_any_ranks_and_workers(
    manifest, world_size, num_workers
):
    """--global-batch-size 12 (4 canonical streams of chunks of 3): every step's samples, in
    order, are those of one process without workers, also where ranks share a stream (3, 6,
    12 ranks) and from any step a resume skips to."""
    steps = sum(TRAIN_SHARDS) // 12
    one = global_batches(manifest, config(manifest, 0, global_batch=12), steps, 1)
    cfg = config(manifest, num_workers, global_batch=12)
    assert global_batches(manifest, cfg, steps, world_size) == one
    assert global_batches(manifest, cfg, steps, world_size, skip=2) == one[2:]
    seen = [i for step in one for i in step]
    assert len(seen) == len(set(seen)) == steps * 12


@pytest.mark.parametrize(
    "old, new, old_workers, new_workers", [(2, 1, 2, 0), (2, 3, 0, 2), (1, 2, 2, 2), (3, 2, 2, 0)]
)
def test_a_resized_resume_reads_every_sample_of_the_epoch_once(
    manifest, old, new, old_workers, new_workers
):
    """Real samples (ids decoded from the images): k steps on `old` ranks, then the rest of
    the epoch on `new` ranks, other workers and batch size: each sample at most once, fewer
    than one new global batch never trained."""
    before = config(manifest, old_workers, shuffle_buffer=12)
    after = DataConfig(shards=manifest.root, batch_size=3, num_workers=new_workers)
    steps = train_steps_per_epoch(manifest, BATCH * old)
    plan, position = plan_epoch(Position(), 1, layout(before, old), 5, steps)
    done = steps // 2 + 1
    seen = trained_ids(manifest, before, plan, old, done)
    for _ in range(done):
        position = position.after_step()
    rest, _ = plan_epoch(position, 1, layout(after, new), 5, steps)
    assert rest.index == 1 and rest.skip == 0
    seen += trained_ids(manifest, after, rest, new)
    epoch_ids = {sample_id("train", 1, i) for i in range(sum(TRAIN_SHARDS))}
    assert len(seen) == len(set(seen)) and set(seen) <= epoch_ids
    assert steps * BATCH * old - len(seen) < 3 * new


def test_a_resumed_segment_skips_to_its_tail(manifest):
    """Mid-way through a resized segment, the same layout resumes with the segment's tail."""
    cfg = config(manifest, 2, shuffle_buffer=12)
    _plan, position = plan_epoch(Position(), 0, layout(cfg, 2), 5, 8)
    for _ in range(3):
        position = position.after_step()
    rest, position = plan_epoch(position, 0, layout(cfg, 3), 5, 8)
    full = [ids_of(train_loader(manifest, cfg, rest, rank, 3)) for rank in range(3)]
    for _ in range(2):
        position = position.after_step()
    again, _ = plan_epoch(position, 0, layout(cfg, 3), 5, 8)
    assert again.skip == 2
    for rank in range(3):
        assert ids_of(train_loader(manifest, cfg, again, rank, 3)) == full[rank][2 * BATCH :]
