"""The global data position: which samples make each optimizer step of an epoch, whatever the
number of processes, loader workers or accumulation steps, and which remain after an interruption.

An epoch's samples are positions 0, 1, ... of one sequence: the epoch's shards in a seeded
order, pass after pass (see `seqtrain.data.stream`). An epoch starts as `epoch_samples`
positions (its steps x global batch G). The order is fixed by a `Layout` that names no process:
G, a number C of *canonical streams* and a shuffle window:

    positions → canonical stream c (of C): its contiguous run of `steps * G / C` positions →
    windows of `window` positions, each a seeded permutation → chunks of G / C positions;
    global step k = chunk k of stream 0, chunk k of stream 1, ..., chunk k of stream C - 1

The processes then only split each step's G samples: rank r of W trains the r-th slice of G / W
(`rank_shares`), i.e. the chunks of C / W streams when W divides C; its loader workers split
those streams further (`worker_shares`) and yield, per step, their streams' chunks, which the
main process concatenates in worker order. So step k's samples (and their order within the
global batch) are a pure function of (seed, epoch, layout, k), the same on 1, 2, 4 ... processes,
with any number of workers, and gradient accumulation only cuts a rank's slice into micro-batches.
The checkpointed position is a few integers: the epoch, its size and, per *segment* (a stretch of
the epoch trained with one layout), the layout and the global steps trained (`Segment`). A resume
on another number of processes continues the segment at its next step: the unbroken run's order.

Costs, and what happens where a layout does not fit:
- Each process reads only its streams, each sequentially; its loader holds about
  `--shuffle-buffer` x (its streams / C) samples in windows, and one open shard per stream
  (C / W per process, e.g. 64 on one process: many small sequential reads, fine on local disks,
  more connections for remote shards). A stream starting inside a shard reads that shard's
  earlier chunks and drops them (at most one shard per stream and epoch).
- W not dividing C: a process also reads the one or two streams whose chunks it shares with its
  neighbours, keeping its part of each chunk (up to two extra streams read per process).
- More loader workers than streams a process reads: only that many workers start.
- A resume that changes the layout (G, C or the window: refused unless --accept-changes) starts
  a new segment: the positions the earlier segments left are dealt out anew, in sorted order,
  under the new layout; every sample of the epoch is still trained at most once, less than one
  global batch dropped per segment.
- Checkpoints from inside an epoch written by the older per-process order cannot be placed in
  this one and are refused (`per_process_order`); epoch-end checkpoints load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import torch

# Domain tags keep the random streams apart (shard order: 0, sample shuffle: 1).
SHARD_ORDER, SAMPLE_ORDER = 0, 1
LEDGER_ENV = "SEQTRAIN_SAMPLE_LEDGER"


@dataclass(frozen=True)
class Layout:
    """The order of an epoch's samples: global batch, canonical streams, shuffle window. It names
    no process: any number of processes trains the same steps from it."""

    global_batch: int
    streams: int  # canonical streams; divides global_batch
    window: int  # positions permuted together per stream, a multiple of `chunk`

    @property
    def chunk(self) -> int:
        """Positions each stream gives every global step."""
        return self.global_batch // self.streams

    def describe(self) -> str:
        return f"global batch {self.global_batch} ({self.streams} canonical streams)"


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
        """The position `to_json` wrote; from an epoch end of the per-process order (see
        `per_process_order`), the epoch and step without a last layout."""
        if per_process_order(meta):
            raise ValueError("a position inside an epoch of the per-process order")
        segments = tuple(Segment(_layout(s), s["steps"]) for s in meta["segments"])
        last = meta.get("last_layout")
        known = last is not None and "global_batch" in last
        return cls(
            meta["epoch"], meta["step"], meta["epoch_samples"], segments,
            _layout(last) if known else None,
        )  # fmt: skip


def per_process_order(meta: dict) -> bool:
    """A checkpoint record saved inside an epoch by a seqtrain whose order depended on the
    number of processes (its segments name a world size): it cannot be placed in this order."""
    return any("world_size" in s for s in meta.get("segments", ()))


def _layout(fields: dict) -> Layout:
    return Layout(fields["global_batch"], fields["streams"], fields["window"])


@dataclass(frozen=True)
class Stream:
    """One canonical stream of a segment: its positions (sorted) and, per window, the order in
    which to train them (indices into the window)."""

    positions: np.ndarray
    windows: list[np.ndarray]

    def batch_order(self) -> np.ndarray:
        """Indices into `positions` in training order."""
        if not self.windows:
            return np.zeros(0, dtype=np.int64)
        starts = np.cumsum([0] + [len(w) for w in self.windows[:-1]])
        return np.concatenate([w + s for w, s in zip(self.windows, starts, strict=True)])


@dataclass(frozen=True)
class Share:
    """What one process trains of canonical stream `stream` each step: its chunk's [lo, hi)."""

    stream: int
    lo: int
    hi: int


def rank_shares(layout: Layout, rank: int, world_size: int) -> list[Share]:
    """Rank `rank`'s slice of every global step (samples [r G/W, (r+1) G/W) of it), as the
    streams it covers in order: whole chunks where W divides C, else partial ones at its ends."""
    per_rank = layout.global_batch // world_size
    start, stop = rank * per_rank, (rank + 1) * per_rank
    chunk = layout.chunk
    return [
        Share(c, max(start - c * chunk, 0), min(stop - c * chunk, chunk))
        for c in range(start // chunk, (stop - 1) // chunk + 1)
    ]


def worker_shares(shares: list[Share], workers: int) -> list[list[Share]]:
    """A rank's shares split over its loader workers in order (contiguous groups, sizes differing
    by at most one): concatenating each step's parts in worker order gives the rank's batch. At
    most one worker per share; 0 workers (loading in the main process) is one group."""
    parts = max(1, min(workers, len(shares)))
    return [shares[len(shares) * w // parts : len(shares) * (w + 1) // parts] for w in range(parts)]


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

    def stream(self, index: int) -> Stream:
        """Canonical stream `index`: its contiguous run of the positions, shuffled window by
        window."""
        run = self.steps * self.layout.chunk
        positions = self.positions[index * run : (index + 1) * run]
        # A later segment adds its index: each segment shuffles anew.
        later = [self.index] if self.index else []
        rng = np.random.default_rng([self.seed, self.epoch, SAMPLE_ORDER, index, *later])
        window = self.layout.window
        windows = [rng.permutation(min(window, run - lo)) for lo in range(0, run, window)]
        return Stream(positions, windows)

    def _ordered(self, index: int) -> np.ndarray:
        """Stream `index`'s positions in training order (cached)."""
        if index not in self._orders:
            chosen = self.stream(index)
            self._orders[index] = chosen.positions[chosen.batch_order()]
        return self._orders[index]

    def batch_positions(self, step: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Positions rank `rank` of `world_size` trains in step `step` (from 0) of the segment,
        in batch order; with the defaults, the whole global batch."""
        lo = step * self.layout.chunk
        shares = rank_shares(self.layout, rank, world_size)
        return np.concatenate([self._ordered(s.stream)[lo + s.lo : lo + s.hi] for s in shares])

    def consumed(self, steps: int) -> np.ndarray:
        """Positions trained by the segment's first `steps` global steps."""
        taken = steps * self.layout.chunk
        return np.concatenate([self._ordered(c)[:taken] for c in range(self.layout.streams)])

    def remaining(self, steps: int) -> np.ndarray:
        """Positions left (sorted) after the segment's first `steps` global steps."""
        return np.setdiff1d(self.positions, self.consumed(steps), assume_unique=True)


def plan_epoch(
    position: Position, epoch: int, layout: Layout, seed: int, fresh_steps: int
) -> tuple[EpochPlan, Position]:
    """The segment of `epoch` to train now with `layout`, and the position it starts from.

    A new epoch holds `fresh_steps` global steps. Resumed mid-epoch with the checkpoint's layout
    (on any number of processes), the last segment continues; with another layout, a new segment
    deals out what is left."""
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
    """One line when the checkpoint's last layout (the sample order) differs from this run's,
    else None: a change of the number of processes alone keeps the order."""
    old = position.last_layout
    if old is None or old == layout:
        return None
    line = f"resuming with {layout.describe()}; the checkpoint was trained with {old.describe()}"
    if old.global_batch != layout.global_batch:
        line += f": the global batch changes from {old.global_batch} to {layout.global_batch}"
    return line + " (the rest of the epoch is dealt out anew)"


class TrainBatch(NamedTuple):
    """One process's batch of a step: uint8 images [B, 1, 28, 84], labels int64 [B, 3], and
    each sample's dropout key (int64 [B], `sample_keys`), on the host or already on the device."""

    images: torch.Tensor
    labels: torch.Tensor
    keys: torch.Tensor


_MASK64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit finalizer (xor-shift-multiply rounds) over uint64 arrays."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_keys(seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """Each sample's key for per-sample randomness (dropout): a hash of (seed, epoch, position),
    non-negative int64, so the same on whichever process trains the sample."""
    base = _mix64(np.array([seed & _MASK64], dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    base = _mix64(base ^ np.uint64(epoch))
    keys = _mix64(base ^ np.asarray(positions, dtype=np.uint64))
    return (keys >> np.uint64(1)).astype(np.int64)


def planned_batches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    plan: EpochPlan,
    rank: int,
    world_size: int,
    lr: Callable[[], float],
) -> Iterator[TrainBatch]:
    """Rank `rank`'s loader batches with their samples' dropout keys. With
    $SEQTRAIN_SAMPLE_LEDGER=<dir> set (a debugging and test hook), each batch's positions and LR
    are also appended, one JSON line per batch, to <dir>/rank<r>.jsonl before it is yielded (so
    before it is trained)."""
    with _ledger(rank) as ledger:
        for step, (images, labels) in enumerate(batches, start=plan.skip):
            positions = plan.batch_positions(step, rank, world_size)
            if ledger is not None:
                _record(ledger, plan, step, world_size, lr(), positions)
            keys = torch.from_numpy(sample_keys(plan.seed, plan.epoch, positions))
            yield TrainBatch(images, labels, keys)


def _ledger(rank: int) -> AbstractContextManager[IO[str] | None]:
    """Rank `rank`'s ledger file, opened to append, or None without $SEQTRAIN_SAMPLE_LEDGER."""
    folder = os.environ.get(LEDGER_ENV)
    if not folder:
        return nullcontext()
    Path(folder).mkdir(parents=True, exist_ok=True)
    return (Path(folder) / f"rank{rank}.jsonl").open("a")


def _record(
    ledger: IO[str], plan: EpochPlan, step: int, world_size: int, lr: float, positions: np.ndarray
) -> None:
    line = {
        "epoch": plan.epoch,
        "segment": plan.index,
        "batch": step,
        "world_size": world_size,
        "lr": lr,
        "samples": positions.tolist(),
    }
    ledger.write(json.dumps(line) + "\n")
    ledger.flush()
