"""The global data position: which samples of a training epoch are trained, by which rank and
in which order, and which remain after an interruption, whatever the number of processes.

An epoch's samples are positions 0, 1, ... of one sequence: the epoch's shards in a seeded
order, pass after pass (see `seqtrain.data.stream`). An epoch starts as `epoch_samples`
positions (its steps x global batch). A *segment* is a stretch of the epoch trained with one
`Layout` (processes, per-process batch, loader streams, shuffle window); a resize starts a new
segment. Every segment deals out the positions the earlier ones left, in sorted order:

    positions left → rank r: its contiguous run of `steps * batch_size` → stream w (a loader
    worker): its contiguous share → windows of `window` positions, each a seeded permutation
    → batches; the rank's batch k is batch k // streams of stream k % streams (DataLoader's
    round robin)

Design choice: per-rank runs with the unconsumed remainder re-split, rather than one global
order sliced per step. Each rank reads its own part of the shards sequentially (no rank reads
what another trains on), and since the shuffle is a permutation of *positions*, computed before
any byte is read, the samples of the first k steps of a segment are a pure function of
(seed, epoch, segment index, layout, positions left, k). So the checkpointed position is a few
integers: the epoch, its size, and for each segment its layout and the global steps trained
(`Segment`). Resuming with the same layout continues the segment (the same batches as an
unbroken run); with another, the positions left are re-split over the new ranks, so over the
segments every sample of the epoch is trained exactly once, less than one global batch
dropped per segment. Only the few windows a segment left half-used leave holes that a reader
skips over.

Not offered: with a fixed global batch, the samples of a global step still depend on the
number of processes (a resized run does not follow an unbroken run's order).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

# Domain tags keep the random streams apart (shard order: 0, sample shuffle: 1).
SHARD_ORDER, SAMPLE_ORDER = 0, 1
LEDGER_ENV = "SEQTRAIN_SAMPLE_LEDGER"


@dataclass(frozen=True)
class Layout:
    """How a segment deals out its samples: everything that shapes who trains which sample when."""

    world_size: int
    batch_size: int
    streams: int  # loader streams per rank (workers, at least 1)
    window: int  # positions permuted together per stream, a multiple of batch_size; 0: all

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    def describe(self) -> str:
        return (
            f"{self.world_size} process(es) x batch {self.batch_size} "
            f"(global batch {self.global_batch})"
        )


@dataclass(frozen=True)
class Segment:
    """A stretch of an epoch trained with one layout: `steps` global steps of it done."""

    layout: Layout
    steps: int = 0


@dataclass(frozen=True)
class Position:
    """Where training continues: the epoch, the global optimizer step, the epoch's size in
    samples and its segments (empty before the epoch's first step). A global quantity: no
    per-rank state, so any number of processes can continue from it. `last_layout`: the layout
    of the latest segment (kept across the epoch boundary, to state a change at resume)."""

    epoch: int = 0
    step: int = 0
    epoch_samples: int = 0
    segments: tuple[Segment, ...] = ()
    last_layout: Layout | None = None

    @property
    def samples_done(self) -> int:
        """Samples of the epoch trained so far, over all segments and ranks."""
        return sum(s.steps * s.layout.global_batch for s in self.segments)

    @property
    def steps_done(self) -> int:
        """Global steps of the epoch trained so far, over all segments."""
        return sum(s.steps for s in self.segments)

    def after_step(self) -> Position:
        last = self.segments[-1]
        return replace(
            self,
            step=self.step + 1,
            segments=(*self.segments[:-1], replace(last, steps=last.steps + 1)),
        )

    def start_segment(self, layout: Layout) -> Position:
        return replace(self, segments=(*self.segments, Segment(layout)), last_layout=layout)

    def next_epoch(self) -> Position:
        return Position(self.epoch + 1, self.step, last_layout=self.last_layout)

    def to_json(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "epoch_samples": self.epoch_samples,
            "samples_done": self.samples_done,  # for people reading the file; derived
            "segments": [{**vars(s.layout), "steps": s.steps} for s in self.segments],
            "last_layout": vars(self.last_layout) if self.last_layout else None,
        }

    @classmethod
    def from_json(cls, meta: dict) -> Position:
        segments = tuple(Segment(_layout(s), s["steps"]) for s in meta["segments"])
        last = meta.get("last_layout")
        return cls(
            meta["epoch"],
            meta["step"],
            meta["epoch_samples"],
            segments,
            _layout(last) if last else None,
        )


def _layout(fields: dict) -> Layout:
    return Layout(fields["world_size"], fields["batch_size"], fields["streams"], fields["window"])


@dataclass(frozen=True)
class Stream:
    """One loader stream's share of a segment: its positions (sorted) and, per window, the
    order in which to train them (indices into the window)."""

    positions: np.ndarray
    windows: list[np.ndarray]

    def batch_order(self) -> np.ndarray:
        """Indices into `positions` in training order."""
        if not self.windows:
            return np.zeros(0, dtype=np.int64)
        starts = np.cumsum([0] + [len(w) for w in self.windows[:-1]])
        return np.concatenate([w + s for w, s in zip(self.windows, starts, strict=True)])


@dataclass(frozen=True)
class EpochPlan:
    """One segment of one epoch: the positions it deals out, its layout, and how many of its
    global steps are already done (`skip`)."""

    seed: int
    epoch: int
    index: int  # the segment's index in the epoch (seeds its shuffle)
    positions: np.ndarray  # sorted, what the earlier segments left
    layout: Layout
    skip: int = 0
    _orders: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def steps(self) -> int:
        """Global steps of this segment (every rank runs this many)."""
        return len(self.positions) // self.layout.global_batch

    def streams(self, rank: int) -> list[Stream]:
        """Rank `rank`'s streams: its run of the positions, cut in proportion to the batches
        each stream delivers, each shuffled window by window."""
        layout = self.layout
        run = layout.batch_size * self.steps
        start = rank * run
        streams = []
        for w in range(layout.streams):
            length = layout.batch_size * len(range(w, self.steps, layout.streams))
            positions = self.positions[start : start + length]
            start += length
            # A later segment adds its index: segment 0 keeps the order unresized runs had
            # before segments existed.
            later = [self.index] if self.index else []
            rng = np.random.default_rng([self.seed, self.epoch, SAMPLE_ORDER, rank, w, *later])
            window = layout.window or max(length, 1)
            windows = [rng.permutation(min(window, length - lo)) for lo in range(0, length, window)]
            streams.append(Stream(positions, windows))
        return streams

    def batch_positions(self, rank: int, batch: int) -> np.ndarray:
        """Positions of rank `rank`'s batch `batch` (from 0) of this segment."""
        layout = self.layout
        stream = batch % layout.streams
        if (rank, stream) not in self._orders:
            chosen = self.streams(rank)[stream]
            self._orders[rank, stream] = chosen.positions[chosen.batch_order()]
        lo = batch // layout.streams * layout.batch_size
        return self._orders[rank, stream][lo : lo + layout.batch_size]

    def consumed(self, steps: int) -> np.ndarray:
        """Positions trained by the segment's first `steps` global steps, over all ranks."""
        layout = self.layout
        taken = []
        for rank in range(layout.world_size):
            for w, stream in enumerate(self.streams(rank)):
                batches = len(range(w, steps, layout.streams))
                taken.append(stream.positions[stream.batch_order()[: batches * layout.batch_size]])
        return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)

    def remaining(self, steps: int) -> np.ndarray:
        """Positions left (sorted) after the segment's first `steps` global steps."""
        return np.setdiff1d(self.positions, self.consumed(steps), assume_unique=True)


def plan_epoch(
    position: Position, epoch: int, layout: Layout, seed: int, fresh_steps: int
) -> tuple[EpochPlan, Position]:
    """The segment of `epoch` to train now with `layout`, and the position it starts from.

    A new epoch holds `fresh_steps` global steps. Resumed mid-epoch with the checkpoint's layout,
    the last segment continues; with another layout, a new segment deals out what is left."""
    if position.epoch != epoch or not position.segments:
        size = fresh_steps * layout.global_batch
        start = Position(epoch, position.step, size).start_segment(layout)
        return EpochPlan(seed, epoch, 0, np.arange(size, dtype=np.int64), layout), start
    left = np.arange(position.epoch_samples, dtype=np.int64)
    for index, segment in enumerate(position.segments[:-1]):
        left = EpochPlan(seed, epoch, index, left, segment.layout).remaining(segment.steps)
    last = position.segments[-1]
    index = len(position.segments) - 1
    if last.layout == layout:
        return EpochPlan(seed, epoch, index, left, layout, skip=last.steps), position
    left = EpochPlan(seed, epoch, index, left, last.layout).remaining(last.steps)
    return EpochPlan(seed, epoch, index + 1, left, layout), position.start_segment(layout)


def resize_note(position: Position, layout: Layout) -> str | None:
    """One line when the checkpoint's last layout differs from this run's, else None."""
    old = position.last_layout
    if old is None or old == layout:
        return None
    line = f"resuming on {layout.describe()}; the checkpoint was trained on {old.describe()}"
    if old.global_batch != layout.global_batch:
        line += f": the global batch changes from {old.global_batch} to {layout.global_batch}"
    return line


def record_batches(
    batches: Iterable, plan: EpochPlan, rank: int, lr: Callable[[], float]
) -> Iterator:
    """`batches` as is; with $SEQTRAIN_SAMPLE_LEDGER=<dir> set (a debugging and test hook),
    each batch's positions and LR are also appended, one JSON line per batch, to
    <dir>/rank<r>.jsonl before it is yielded (so before it is trained)."""
    folder = os.environ.get(LEDGER_ENV)
    if not folder:
        yield from batches
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"rank{rank}.jsonl", "a") as ledger:
        for batch, item in enumerate(batches, start=plan.skip):
            line = {
                "epoch": plan.epoch,
                "segment": plan.index,
                "batch": batch,
                "world_size": plan.layout.world_size,
                "lr": lr(),
                "samples": plan.batch_positions(rank, batch).tolist(),
            }
            ledger.write(json.dumps(line) + "\n")
            ledger.flush()
            yield item
