"""The global data position: pure functions of the sample assignment, over many world sizes
and resizes, without spawning processes."""

from __future__ import annotations

import itertools

import pytest

from seqtrain.data.position import Layout, Position, Segment, plan_epoch, resize_note

SEED, EPOCH = 7, 3


def layout(world_size: int, batch: int = 3, streams: int = 2, window: int = 6) -> Layout:
    return Layout(world_size, batch, streams, window)


def trained(plan, steps: int) -> list[int]:
    """What every rank trains in the plan's first `steps` global steps (skip on)."""
    return [
        int(p)
        for step in range(plan.skip, steps)
        for rank in range(plan.layout.world_size)
        for p in plan.batch_positions(rank, step)
    ]


def run_segments(first: Layout, steps_first: int, layouts: list[Layout], epoch_steps: int):
    """Train `steps_first` steps of a fresh epoch with `first`, then the whole rest with each
    of `layouts` in turn interrupted halfway (the last one to its end); returns every trained
    position and the final plan."""
    plan, position = plan_epoch(Position(epoch=EPOCH), EPOCH, first, SEED, epoch_steps)
    seen = trained(plan, steps_first)
    for _ in range(steps_first):
        position = position.after_step()
    for i, next_layout in enumerate(layouts):
        plan, position = plan_epoch(position, EPOCH, next_layout, SEED, epoch_steps)
        stop = plan.steps if i == len(layouts) - 1 else plan.steps // 2
        seen += trained(plan, stop)
        for _ in range(stop - plan.skip):
            position = position.after_step()
    return seen, plan, position


@pytest.mark.parametrize("old, new", list(itertools.product([1, 2, 3, 4, 5], repeat=2)))
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.9])
def test_every_sample_of_the_epoch_exactly_once_over_a_resize(old, new, fraction):
    epoch_steps = 9
    first = layout(old)
    done = int(epoch_steps * fraction)
    seen, last_plan, position = run_segments(first, done, [layout(new)], epoch_steps)
    size = epoch_steps * first.global_batch
    assert len(seen) == len(set(seen)), "a sample trained twice"
    assert set(seen) <= set(range(size))
    assert size - len(seen) < last_plan.layout.global_batch  # less than one global batch lost
    assert position.samples_done == len(seen)


@pytest.mark.parametrize(
    "layouts",
    [
        [layout(2), layout(3, batch=5, streams=1, window=10), layout(1, streams=3, window=3)],
        [layout(4, window=0), layout(2, streams=1), layout(5, batch=2, window=4)],
    ],
)
def test_several_resizes_and_layout_changes_in_one_epoch(layouts):
    seen, _last_plan, position = run_segments(layouts[0], 4, layouts[1:], epoch_steps=12)
    size = 12 * layouts[0].global_batch
    assert len(seen) == len(set(seen)) and set(seen) <= set(range(size))
    assert size - len(seen) < sum(lay.global_batch for lay in layouts[1:])
    assert [s.layout for s in position.segments] == layouts


def test_the_same_layout_continues_the_unbroken_order():
    lay = layout(3)
    plan, position = plan_epoch(Position(epoch=EPOCH), EPOCH, lay, SEED, 8)
    unbroken = trained(plan, plan.steps)
    for _ in range(5):
        position = position.after_step()
    again, _ = plan_epoch(position, EPOCH, lay, SEED, 8)
    assert again.skip == 5 and again.index == 0
    assert trained(plan, 5) + trained(again, again.steps) == unbroken


def test_each_rank_trains_a_contiguous_run_and_every_rank_the_same_steps():
    plan, _ = plan_epoch(Position(), 0, layout(3), SEED, 8)
    per_rank = [
        sorted(int(p) for step in range(plan.steps) for p in plan.batch_positions(r, step))
        for r in range(3)
    ]
    for rank, positions in enumerate(per_rank):
        run = 8 * 3
        assert positions == list(range(rank * run, (rank + 1) * run))


def test_the_order_is_seeded_and_shuffled():
    def order(seed: int) -> list[int]:
        plan, _ = plan_epoch(Position(), 0, layout(1, window=12), seed, 8)
        return trained(plan, plan.steps)

    assert order(1) == order(1) != order(2)
    assert order(1) != sorted(order(1))


def test_the_position_round_trips_through_json():
    segments = (Segment(layout(2), 5), Segment(layout(3, window=0), 1))
    position = Position(2, 40, 96, segments, segments[-1].layout)
    assert Position.from_json(position.to_json()) == position
    assert Position.from_json(position.next_epoch().to_json()) == position.next_epoch()
    assert position.to_json()["samples_done"] == 5 * 6 + 1 * 9


def test_a_resize_is_stated_in_one_line_naming_the_global_batches():
    mid_epoch = Position(0, 3, 48, (Segment(layout(2), 3),), layout(2))
    assert resize_note(Position(), layout(2)) is None
    for position in (mid_epoch, mid_epoch.next_epoch()):
        assert resize_note(position, layout(2)) is None
        note = resize_note(position, layout(3))
        assert "global batch changes from 6 to 9" in note and "\n" not in note
        assert "changes" not in resize_note(position, layout(2, batch=3, streams=1))
