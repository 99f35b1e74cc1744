"""The global data position: pure functions of the sample order, over many world sizes, loader
workers and resizes, without spawning processes (as MosaicML streaming's partition tests)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from seqtrain.common.errors import UserError
from seqtrain.config import DataConfig
from seqtrain.data.global_batch import batch_sizes
from seqtrain.data.position import (
    Layout,
    Position,
    Segment,
    per_process_order,
    plan_epoch,
    rank_shares,
    resize_note,
    sample_keys,
    worker_shares,
)

SEED, EPOCH = 7, 3


def layout(global_batch: int = 24, streams: int = 8, window: int = 6) -> Layout:
    return Layout(global_batch, streams, window)


def steps_of(plan, world_size: int, steps: int | None = None) -> list[list[int]]:
    """Each global step from `plan.skip` on: the ranks' batches joined in rank order."""
    stop = plan.steps if steps is None else steps
    return [
        [int(p) for r in range(world_size) for p in plan.batch_positions(step, r, world_size)]
        for step in range(plan.skip, stop)
    ]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 6, 8, 12, 24])
def test_every_step_trains_the_same_samples_on_any_number_of_processes(world_size):
    plan, _ = plan_epoch(Position(epoch=EPOCH), EPOCH, layout(), SEED, 9)
    one = steps_of(plan, 1)
    assert steps_of(plan, world_size) == one
    assert all(len(step) == 24 for step in one)
    every = [p for step in one for p in step]
    assert sorted(every) == list(range(9 * 24))  # the whole epoch, each sample once


@pytest.mark.parametrize("global_batch, streams", [(24, 8), (64, 64), (12, 4), (30, 5)])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5, 6, 8, 12, 16, 64])
@pytest.mark.parametrize("workers", [0, 1, 2, 3, 7, 100])
def test_ranks_and_workers_cover_each_step_once_in_order(
    global_batch, streams, world_size, workers
):
    if global_batch % world_size:
        return
    lay = Layout(global_batch, streams, global_batch // streams)
    chunk, per_rank = lay.chunk, global_batch // world_size
    covered = []
    for rank in range(world_size):
        shares = rank_shares(lay, rank, world_size)
        assert sum(s.hi - s.lo for s in shares) == per_rank
        assert all(0 <= s.lo < s.hi <= chunk for s in shares)
        if streams % world_size == 0:  # then each stream is read by one process only
            assert all((s.lo, s.hi) == (0, chunk) for s in shares)
        groups = worker_shares(shares, workers)
        assert len(groups) == max(1, min(workers, len(shares)))
        assert [s for group in groups for s in group] == shares and all(groups)
        covered += [s.stream * chunk + i for s in shares for i in range(s.lo, s.hi)]
    assert covered == list(range(global_batch))


@pytest.mark.parametrize("old, new", list(itertools.product([1, 2, 3, 4, 6], repeat=2)))
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.9])
def test_a_resize_mid_epoch_follows_the_unbroken_order(old, new, fraction):
    """Checkpointed after k steps on `old` processes, resumed on `new`: the same steps."""
    epoch_steps = 9
    plan, position = plan_epoch(Position(epoch=EPOCH), EPOCH, layout(), SEED, epoch_steps)
    unbroken = steps_of(plan, 1)
    done = int(epoch_steps * fraction)
    trained = steps_of(plan, old, done)
    for _ in range(done):
        position = position.after_step()
    saved = Position.from_json(json.loads(json.dumps(position.to_json())))
    rest, after = plan_epoch(saved, EPOCH, layout(), SEED, epoch_steps)
    assert (rest.index, rest.skip, after) == (0, done, saved)
    assert trained + steps_of(rest, new) == unbroken


@pytest.mark.parametrize(
    "layouts",
    [
        [layout(), layout(36, 4, 9), layout(10, 2, 5)],
        [layout(8, 8, 1), layout(24, 8, 3), layout(64, 64, 1)],
    ],
)
def test_a_changed_global_batch_deals_the_rest_of_the_epoch_anew(layouts):
    """--accept-changes: every sample of the epoch trained at most once over the segments,
    less than one global batch dropped per segment."""
    epoch_steps = 12
    plan, position = plan_epoch(Position(epoch=EPOCH), EPOCH, layouts[0], SEED, epoch_steps)
    seen = [p for step in steps_of(plan, 2, 4) for p in step]
    for _ in range(4):
        position = position.after_step()
    for i, next_layout in enumerate(layouts[1:]):
        plan, position = plan_epoch(position, EPOCH, next_layout, SEED, epoch_steps)
        assert (plan.index, plan.skip) == (i + 1, 0)
        stop = plan.steps if i == len(layouts) - 2 else plan.steps // 2
        seen += [p for step in steps_of(plan, 1, stop) for p in step]
        for _ in range(stop):
            position = position.after_step()
    size = epoch_steps * layouts[0].global_batch
    assert len(seen) == len(set(seen)) and set(seen) <= set(range(size))
    assert size - len(seen) < sum(lay.global_batch for lay in layouts[1:])
    assert position.samples_done == len(seen)
    assert [s.layout for s in position.segments] == layouts


def test_the_order_is_seeded_and_shuffled_within_each_stream():
    def order(seed: int) -> list[int]:
        plan, _ = plan_epoch(Position(), 0, layout(window=24), seed, 8)
        return [p for step in steps_of(plan, 1) for p in step]

    assert order(1) == order(1) != order(2)
    assert order(1) != sorted(order(1))
    plan, _ = plan_epoch(Position(), 0, layout(window=24), 1, 8)
    runs = [sorted(plan.stream(c).positions) for c in range(8)]
    assert runs == [list(range(c * 24, (c + 1) * 24)) for c in range(8)]  # contiguous runs


def test_the_position_round_trips_through_json():
    segments = (Segment(layout(), 5), Segment(layout(36, 4, 9), 1))
    position = Position(2, 40, 216, segments, segments[-1].layout)
    assert Position.from_json(position.to_json()) == position
    assert Position.from_json(position.next_epoch().to_json()) == position.next_epoch()
    assert position.to_json()["samples_done"] == 5 * 24 + 1 * 36


def test_positions_of_the_per_process_order_load_only_at_an_epoch_end():
    old = {"world_size": 2, "batch_size": 16, "streams": 2, "window": 8192}
    inside = {"epoch": 1, "step": 30, "epoch_samples": 576,
              "segments": [{**old, "steps": 4}], "last_layout": old}  # fmt: skip
    assert per_process_order(inside)
    with pytest.raises(ValueError):
        Position.from_json(inside)
    at_end = {**inside, "segments": [], "epoch_samples": 0}
    assert not per_process_order(at_end)
    assert Position.from_json(at_end) == Position(1, 30)


def test_a_change_of_the_order_is_stated_in_one_line_and_a_resize_alone_is_not():
    mid_epoch = Position(0, 3, 48, (Segment(layout(), 3),), layout())
    assert resize_note(Position(), layout()) is None
    for position in (mid_epoch, mid_epoch.next_epoch()):
        assert resize_note(position, layout()) is None
        note = resize_note(position, layout(48, 8, 6))
        assert "global batch changes from 24 to 48" in note and "\n" not in note


def test_sample_keys_depend_on_seed_epoch_and_position_only():
    keys = sample_keys(SEED, EPOCH, np.arange(1000))
    assert keys.dtype == np.int64 and (keys >= 0).all() and len(set(keys.tolist())) == 1000
    assert np.array_equal(sample_keys(SEED, EPOCH, np.arange(500, 1000)), keys[500:])
    assert not np.array_equal(sample_keys(SEED + 1, EPOCH, np.arange(1000)), keys)
    assert not np.array_equal(sample_keys(SEED, EPOCH + 1, np.arange(1000)), keys)


@pytest.mark.parametrize(
    "flags, processes, sizes",
    [
        ({}, 3, (384, 128, 128, 64)),  # --batch-size 128 per process (the default)
        ({"global_batch_size": 128}, 1, (128, 128, 128, 64)),
        ({"global_batch_size": 128}, 4, (128, 32, 32, 64)),
        ({"global_batch_size": 128, "micro_batch_size": 16}, 2, (128, 64, 16, 64)),
        ({"global_batch_size": 96}, 3, (96, 32, 32, 32)),
        ({"global_batch_size": 100, "canonical_streams": 10}, 5, (100, 20, 20, 10)),
    ],
)
def test_batch_sizes_from_the_flags(flags, processes, sizes):
    got = batch_sizes(DataConfig(**flags), processes)
    assert (got.global_batch, got.per_process, got.micro, got.streams) == sizes
    assert got.accumulation == got.per_process // got.micro
    assert f"global batch {sizes[0]} = {processes} process(es) x {sizes[1]}" in got.describe()


@pytest.mark.parametrize(
    "flags, processes, flag",
    [
        ({"global_batch_size": 64}, 3, "--global-batch-size 64 does not divide by the 3"),
        ({"global_batch_size": 64, "micro_batch_size": 24}, 2, "--micro-batch-size 24"),
        ({"batch_size": 16, "micro_batch_size": 5}, 2, "--micro-batch-size 5"),
        ({"global_batch_size": 64, "canonical_streams": 24}, 1, "--canonical-streams 24"),
    ],
)
def test_sizes_that_do_not_divide_are_one_line_errors_naming_the_flag(flags, processes, flag):
    with pytest.raises(UserError, match=flag) as info:
        batch_sizes(DataConfig(**flags), processes)
    assert "\n" not in str(info.value)
