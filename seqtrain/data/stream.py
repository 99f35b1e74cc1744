"""Train and eval loaders: webdataset pipelines over the shards of `seqtrain.data.format`.

Each training loader is one explicit list of stages, built per epoch segment:

    plan (`seqtrain.data.position`: which positions make each global step) → per worker, its
    share of the rank's canonical streams, each read sequentially (tar chunks), each window
    gathered and put in its planned order, cut into per-step chunks → per step, the worker's
    part of the rank's batch → the main process joins the workers' parts (in worker order)

The split is by *sample position*, not by whole shards. The shards of an epoch, in a seeded
order shared by all ranks, form one sequence of samples (repeated, reshuffled, when an epoch
needs more than the generator wrote); `seqtrain.data.position` deals its positions to canonical
streams and shuffle windows, and each step's global batch to ranks and workers. So every rank
gets exactly `steps` batches whatever the number of shards, ranks and workers (no uneven-shard
hang), the batches are the same for any number of ranks and workers, and an epoch reads every
sample once, losing fewer than one global batch (no shard is silently dropped, none read
twice). Eval splits by contiguous runs without shuffling or repetition: every sample exactly
once over all ranks.

Everything is a pure function of the arguments, so the same call gives the same batches in
the same order: that is what makes mid-epoch resume exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain, islice
from typing import IO

import numpy as np
import torch
import webdataset as wds
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from seqtrain.common.errors import UserError
from seqtrain.common.stop_signals import shield_worker, shielded_worker_start
from seqtrain.common.storage import StorageError, open_shard
from seqtrain.config import DataConfig
from seqtrain.data.format import (
    IMAGE_EXT,
    LABEL_EXT,
    Manifest,
    ShardInfo,
    check_chunk,
    load_npy,
)
from seqtrain.data.global_batch import BatchSizes
from seqtrain.data.position import (
    SHARD_ORDER,
    EpochPlan,
    Layout,
    Stream,
    rank_shares,
    worker_shares,
)

Batch = tuple[Tensor, Tensor]
# Arrays, not tensors, cross from the workers: a pickled array through the pipe is about 3x
# faster here than torch's per-tensor shared-memory handover (see bench/loader_throughput.py).
Chunk = tuple[np.ndarray, np.ndarray]


def images_to_float(images: Tensor) -> Tensor:
    """uint8 images (any shape) → float32 in [0, 1]; call it on the device, after the copy."""
    return images.to(torch.float32).div_(255)


def train_steps_per_epoch(manifest: Manifest, global_batch: int, epoch: int = 0) -> int:
    """Global steps in training epoch `epoch`: its samples // global batch, at least 1."""
    samples = manifest.num_samples("train", generator_epoch(manifest, epoch))
    return max(1, samples // global_batch)


def train_loader(
    manifest: Manifest,
    cfg: DataConfig,
    plan: EpochPlan,
    rank: int,
    world_size: int,
    device: torch.device | None = None,
) -> Batches:
    """Rank `rank` of `world_size`'s training batches of the segment `plan`: exactly
    `plan.steps - plan.skip`, batch k being its slice of the segment's global step k.

    Yields (images uint8 [B, 1, 28, 84], labels int64 [B, 3]), B = global batch / world_size.
    Do not pass the loader through `accelerator.prepare`: it is already split by rank.
    `plan.skip` resumes mid-segment: the result equals the segment's batches from that index
    on. The batches do not depend on `cfg.num_workers` (at most one worker per stream the rank
    reads starts). `device`: where the batches go (None: they stay on the host), see
    `pins_memory`.
    """
    sequence = epoch_sequence(manifest, plan.seed, plan.epoch)
    chunk = plan.layout.chunk
    # Each worker skips the steps already trained itself, not reading windows it would skip.
    groups = [
        [
            ShareRead(stream_read(sequence, plan.stream(s.stream), chunk, plan.skip), s.lo, s.hi)
            for s in group
        ]
        for group in worker_shares(rank_shares(plan.layout, rank, world_size), cfg.num_workers)
    ]
    workers = len(groups) if cfg.num_workers else 0
    loader = _web_loader(_stages(groups, share_steps), workers)
    return Batches(loader, len(groups), plan.steps - plan.skip, pins_memory(cfg, device))


def train_layout(cfg: DataConfig, sizes: BatchSizes) -> Layout:
    """The order `train_loader` (and, with --stage-on-device, `staged_train_loader`) deals an
    epoch's samples in: `sizes`' global batch and canonical streams, each stream shuffling
    windows of --shuffle-buffer / streams positions rounded up to whole chunks (at least one)."""
    streams = sizes.streams
    chunk = sizes.global_batch // streams
    per_stream = -(-cfg.shuffle_buffer // streams)
    window = -(-max(per_stream, chunk) // chunk) * chunk
    return Layout(sizes.global_batch, streams, window)


@dataclass(frozen=True)
class EpochSequence:
    """The endless sample sequence of a training epoch: pass c is the shards in `order(c)`."""

    order: Callable[[int], Sequence[ShardInfo]]
    total: int  # samples per pass

    def pieces(self, start: int, length: int) -> list[_Piece]:
        return sample_pieces(self.order, self.total, start, length)


def epoch_sequence(manifest: Manifest, seed: int, epoch: int) -> EpochSequence:
    shards = manifest.shards("train", generator_epoch(manifest, epoch))
    order = partial(shuffled_shard_order, shards, (seed, epoch, SHARD_ORDER))
    return EpochSequence(order, total_samples(shards, "train"))


@dataclass(frozen=True)
class StreamRead:
    """What one loader stream reads and yields: the samples of `pieces` (those `keep` marks;
    all if None) in windows, each yielded in its order (indices into the window) and cut
    into batches, the first `skip` batches not yielded."""

    pieces: list[_Piece]
    keep: np.ndarray | None
    windows: list[np.ndarray]
    batch_size: int
    skip: int = 0


@dataclass(frozen=True)
class ShareRead:
    """A stream read of which each yielded chunk keeps samples [lo, hi) (a rank's share)."""

    read: StreamRead
    lo: int
    hi: int


def stream_read(sequence: EpochSequence, stream: Stream, batch_size: int, skip: int) -> StreamRead:
    """The read of `stream` from batch `skip` on: windows already trained whole are not read;
    holes (positions trained in an earlier segment) are read over and dropped."""
    sizes = [len(w) for w in stream.windows]
    ends = np.cumsum(sizes, dtype=np.int64)
    first = int(np.searchsorted(ends, skip * batch_size, side="right"))
    offset = int(ends[first - 1]) if first else 0
    span = stream.positions[offset:]
    if len(span) == 0:
        return StreamRead([], None, [], batch_size)
    lo, hi = int(span[0]), int(span[-1]) + 1
    keep = None
    if hi - lo != len(span):
        keep = np.zeros(hi - lo, dtype=bool)
        keep[span - lo] = True
    windows = stream.windows[first:]
    return StreamRead(
        sequence.pieces(lo, hi - lo), keep, windows, batch_size, skip - offset // batch_size
    )


def eval_loader(
    manifest: Manifest,
    cfg: DataConfig,
    split: str,
    rank: int,
    world_size: int,
    device: torch.device | None = None,
    persistent: bool = False,
) -> Batches:
    """This rank's part of `split` (generator epoch 0), unshuffled, in batches of
    `cfg.eval_batch_size` (the rank's last batch may be short). `persistent` keeps the worker
    processes between passes (for a split evaluated again and again, such as val).

    Over ranks 0..world_size-1 every sample appears exactly once; a rank may get no batches
    (fewer samples than ranks), so reduce metrics once after the loop, never per batch.
    """
    shards = manifest.shards(split, 0)
    total = total_samples(shards, split)
    start, stop = total * rank // world_size, total * (rank + 1) // world_size
    batch = cfg.eval_batch_size
    num_batches = math.ceil((stop - start) / batch)
    workers = min(cfg.num_workers, num_batches)  # no idle worker processes
    parts = max(1, workers)
    reads = []
    for w in range(parts):
        # Whole batches per worker, so only the rank's last batch can be short.
        lo = start + num_batches * w // parts * batch
        hi = min(stop, start + num_batches * (w + 1) // parts * batch)
        in_order = [np.arange(min(batch, hi - b)) for b in range(lo, hi, batch)]
        pieces = sample_pieces(lambda _cycle: shards, total, lo, hi - lo)
        reads.append(StreamRead(pieces, None, in_order, batch))
    loader = _web_loader(_stages(reads, stream_batches), workers, persistent)
    return Batches(loader, 1, num_batches, pins_memory(cfg, device))


def pins_memory(cfg: DataConfig, device: torch.device | None) -> bool:
    """--pin-memory applies to batches bound for a CUDA device only: pinning opens a CUDA
    context, which a CPU rank on a GPU node (--cpu) must not do (nor hold its memory)."""
    return cfg.pin_memory and device is not None and device.type == "cuda"


class Batches:
    """One epoch of batches: iterable (again and again, identically) with a known length. Each
    batch joins `parts` consecutive loader items: the workers' parts of it, in worker order
    (DataLoader takes items from its workers round-robin)."""

    def __init__(self, loader: Iterable, parts: int, length: int, pin_memory: bool) -> None:
        self._loader = loader
        self._parts = parts
        self._length = length
        self._pin = pin_memory

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Batch]:
        # A DataLoader draws its workers' base seed from torch's global RNG when the first batch
        # is fetched. Keep that draw off the global stream, which dropout also uses: otherwise a
        # mid-epoch resume, or an evaluation between epochs, shifts the training's randomness.
        # Workers start here (or once, when persistent): see `shielded_worker_start`.
        with torch.random.fork_rng(devices=[]), shielded_worker_start():
            items = iter(self._loader)
            first = next(items, None)
        if first is None:
            return
        items = chain([first], items)
        while parts := list(islice(items, self._parts)):
            errors = [p for p in parts if isinstance(p, _LoaderError)]
            if errors:
                raise UserError(errors[0].message)
            joined = parts[0] if len(parts) == 1 else _joined(parts)
            images = torch.from_numpy(joined[0]).unsqueeze(1)  # [B, 1, 28, 84]
            labels = torch.from_numpy(joined[1])
            if self._pin:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield images, labels


def _joined(parts: list[Chunk]) -> Chunk:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def generator_epoch(manifest: Manifest, epoch: int) -> int:
    epochs = manifest.epochs("train")
    if epochs < 1:
        raise UserError(f"{manifest.root}: the manifest lists no training epochs")
    return epoch % epochs


def total_samples(shards: Sequence[ShardInfo], split: str) -> int:
    total = sum(s.count for s in shards)
    if total == 0:
        raise UserError(f"the manifest lists no {split} samples")
    return total


def shuffled_shard_order(
    shards: Sequence[ShardInfo], seed: tuple[int, ...], cycle: int
) -> list[ShardInfo]:
    """Shard order of one pass over the epoch's shards: the same on every rank and worker."""
    permutation = np.random.default_rng([*seed, cycle]).permutation(len(shards))
    return [shards[i] for i in permutation]


@dataclass(frozen=True)
class _Piece:
    """Samples [start, stop) of one shard of `count` samples."""

    shard: ShardInfo
    start: int
    stop: int
    count: int

    @property
    def path(self) -> str:
        return str(self.shard.path)


def sample_pieces(
    order: Callable[[int], Sequence[ShardInfo]], total: int, start: int, length: int
) -> list[_Piece]:
    """Samples [start, start + length) of the endless sequence pass 0, pass 1, ... where pass
    c is the shards in `order(c)` (`total` samples per pass), as per-shard pieces."""
    pieces = []
    end = start + length
    cycle = start // total
    while cycle * total < end:
        base = cycle * total
        for shard in order(cycle):
            lo, hi = max(start, base), min(end, base + shard.count)
            if lo < hi:
                pieces.append(_Piece(shard, lo - base, hi - base, shard.count))
            base += shard.count
        cycle += 1
    return pieces


def _worker() -> tuple[int, int]:
    """(worker id, number of workers) of the calling loader process; (0, 1) without workers."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _PerWorker(IterableDataset):
    """Pipeline source: the item (a read, or a group of them) planned for the worker that
    iterates it."""

    def __init__(self, items: list) -> None:
        super().__init__()
        self.items = items

    def __iter__(self) -> Iterator:
        worker, num_workers = _worker()
        if num_workers != len(self.items):
            raise RuntimeError(f"planned {len(self.items)} workers, running {num_workers}")
        return iter([self.items[worker]])


def read_chunks(pieces: Iterable[_Piece]) -> Iterator[Chunk]:
    """Pipeline stage: shard pieces → (images [n, 28, 84], labels [n, 3]) uint8 arrays."""
    for piece in pieces:
        yield from _read_piece(piece)


def _read_piece(piece: _Piece) -> Iterator[Chunk]:
    offset = 0  # index in the shard of the first sample of the current chunk
    to_end = piece.stop == piece.count  # then read on, to catch samples beyond the count
    shard = piece.shard
    try:
        with open_shard(shard.path, shard.sha256, shard.cache_dir, shard.cache_max_bytes) as stream:
            for sample in _tar_samples(stream, piece.path):
                if offset >= piece.stop and not to_end:
                    break
                images, labels = _decode(sample)
                lo, hi = max(piece.start - offset, 0), min(piece.stop - offset, len(images))
                if lo < hi:
                    yield images[lo:hi], labels[lo:hi]
                offset += len(images)
    except StorageError as e:
        raise UserError(f"shard {e}") from None
    except FileNotFoundError:
        raise UserError(f"shard {piece.path} is missing") from None
    except Exception as e:
        # webdataset appends the stream and URL to the exception's args; keep the message.
        reason = str(e.args[0]).split(" @ ")[0] if e.args else type(e).__name__
        raise UserError(f"shard {piece.path} is corrupt: {reason}") from None
    if offset < piece.stop:
        raise UserError(f"shard {piece.path} holds {offset} samples, fewer than its manifest count")
    if to_end and offset > piece.count:
        raise UserError(f"shard {piece.path} holds {offset} samples, its manifest {piece.count}")


def _tar_samples(stream: IO[bytes], url: str) -> Iterator[dict]:
    """webdataset's tar stages over an opened shard (`wds.tarfile_samples` minus its opener)."""
    return wds.tariterators.group_by_keys(
        wds.tariterators.tar_file_expander([{"url": url, "stream": stream}])
    )


def _decode(sample: dict) -> Chunk:
    key = sample["__key__"]
    if IMAGE_EXT not in sample or LABEL_EXT not in sample:
        raise ValueError(f"{key}: needs members .{IMAGE_EXT} and .{LABEL_EXT}")
    images, labels = load_npy(sample[IMAGE_EXT]), load_npy(sample[LABEL_EXT])
    return check_chunk(key, images, labels)


def stream_batches(reads: Iterable[StreamRead]) -> Iterator[Chunk]:
    """Pipeline stage: stream reads → batches, each window gathered then put in its order
    with one numpy index (vectorised) and cut into batches by slicing."""
    for read in reads:
        samples = _Samples(_kept(read_chunks(read.pieces), read.keep))
        emitted = 0
        for order in read.windows:
            images, labels = samples.take(len(order))
            images, labels = images[order], labels[order]
            for lo in range(0, len(order), read.batch_size):
                if emitted >= read.skip:
                    hi = lo + read.batch_size
                    yield images[lo:hi], labels[lo:hi].astype(np.int64)
                emitted += 1


def share_steps(groups: Iterable[list[ShareRead]]) -> Iterator[Chunk]:
    """Pipeline stage: a worker's group of share reads → per step, its part of the rank's
    batch: each stream's chunk of the step, cut to the rank's share, joined in stream order."""
    for group in groups:
        chunks = [stream_batches([share.read]) for share in group]
        for step in zip(*chunks, strict=True):
            yield _joined(
                [(c[0][s.lo : s.hi], c[1][s.lo : s.hi]) for c, s in zip(step, group, strict=True)]
            )


def _kept(chunks: Iterable[Chunk], keep: np.ndarray | None) -> Iterator[Chunk]:
    """The samples of `chunks` that `keep` (over all their samples in turn) marks."""
    if keep is None:
        yield from chunks
        return
    offset = 0
    for images, labels in chunks:
        chosen = keep[offset : offset + len(images)]
        offset += len(images)
        if chosen.any():
            yield images[chosen], labels[chosen]


class _Samples:
    """Samples from a stream of chunks, taken in counts that need not match the chunks."""

    def __init__(self, chunks: Iterable[Chunk]) -> None:
        self.chunks = iter(chunks)
        self.pending: list[Chunk] = []
        self.buffered = 0

    def take(self, count: int) -> Chunk:
        while self.buffered < count:
            chunk = next(self.chunks, None)
            if chunk is None:
                raise RuntimeError(
                    f"the planned pieces hold {self.buffered} samples, {count} needed"
                )
            self.pending.append(chunk)
            self.buffered += len(chunk[0])
        images = np.concatenate([c[0] for c in self.pending])
        labels = np.concatenate([c[1] for c in self.pending])
        self.pending = [(images[count:], labels[count:])]
        self.buffered -= count
        return images[:count], labels[:count]


@dataclass(frozen=True)
class _LoaderError:
    """A UserError raised in a worker, carried as an item: re-raised as is, one line, in the
    main process (DataLoader would wrap it in a multi-line traceback message)."""

    message: str


def _errors_as_items(items: Iterable[Chunk]) -> Iterator[Chunk | _LoaderError]:
    """Pipeline stage: the last one; turns a UserError into a `_LoaderError` item."""
    try:
        yield from items
    except UserError as e:
        yield _LoaderError(str(e))


def _stages(items: list, stage: Callable[[Iterable], Iterator[Chunk]]) -> wds.DataPipeline:
    return wds.DataPipeline(_PerWorker(items), stage, _errors_as_items)


def _as_is(item: object) -> object:
    return item


def _web_loader(
    stages: wds.DataPipeline, num_workers: int, persistent: bool = False
) -> wds.WebLoader:
    # batch_size None: the pipeline batches; collate_fn keeps the arrays (see `Chunk`);
    # `Batches` makes tensors and pins them.
    return wds.WebLoader(
        stages,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_as_is,
        persistent_workers=persistent and num_workers > 0,
        worker_init_fn=shield_worker,
    )
