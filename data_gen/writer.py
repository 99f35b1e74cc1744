"""One shard job: render its sequences, write the tar atomically, then its small record.

The record (count, sha256, histograms, config fingerprint) is written only after the shard
is in place, so "record present and sha256 matches the file" means the shard is complete.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data_gen.config import GenConfig
from data_gen.mnist import Mnist
from data_gen.outdir import fingerprint, record_path
from data_gen.plan import ShardJob
from data_gen.splits import DigitPool, digit_pools
from data_gen.stitch import Sequences, compose
from seqtrain.common.atomic import atomic_write_bytes, atomic_write_json
from seqtrain.common.errors import UserError
from seqtrain.common.storage import Location, join, object_size, read_if_present, sha256_file
from seqtrain.data.format import BLANK, NUM_CLASSES, NUM_SLOTS, shard_bytes


@dataclass(frozen=True)
class ShardRecord:
    path: str
    split: str
    epoch: int
    shard: int
    count: int
    sha256: str
    label_histogram: list[int]  # over all slots, classes 0-9 and BLANK
    length_histogram: list[int]  # sequences of length 1, 2, 3
    fingerprint: str
    size: int = 0  # bytes of the shard (0 in records written before it was kept)


@dataclass(frozen=True)
class WriterContext:
    """Everything a worker needs besides the job; built once per run."""

    out: Path
    pools: dict[str, DigitPool]
    seed: int
    length_weights: tuple[float, ...]
    chunk_size: int
    fingerprint: str

    @classmethod
    def from_config(cls, cfg: GenConfig, mnist: Mnist, out: Path | None = None) -> WriterContext:
        """`out`: where shards are written, default --out (a local folder)."""
        return cls(
            out=out or cfg.location,
            pools=digit_pools(mnist, cfg.seed),
            seed=cfg.seed,
            length_weights=cfg.length_weights,
            chunk_size=cfg.chunk_size,
            fingerprint=fingerprint(cfg),
        )


def render(job: ShardJob, ctx: WriterContext) -> Sequences:
    """The sequences of a shard: a pure function of the job and the run's config."""
    return compose(
        ctx.pools[job.split],
        job.count,
        ctx.length_weights,
        job.rng(ctx.seed),
        augment=job.split == "train",
    )


def produce(job: ShardJob, ctx: WriterContext) -> tuple[ShardRecord, bool]:
    """Make sure the shard exists; returns its record and whether it was (re)written."""
    done = completed_record(job, ctx)
    if done is not None:
        return done, False
    seqs = render(job, ctx)
    data = shard_bytes(seqs.images, seqs.labels, job.split, job.epoch, job.shard, ctx.chunk_size)
    record = ShardRecord(
        path=job.relpath,
        split=job.split,
        epoch=job.epoch,
        shard=job.shard,
        count=job.count,
        sha256=hashlib.sha256(data).hexdigest(),
        label_histogram=np.bincount(seqs.labels.ravel(), minlength=NUM_CLASSES).tolist(),
        length_histogram=_length_histogram(seqs.labels),
        fingerprint=ctx.fingerprint,
        size=len(data),
    )
    try:
        atomic_write_bytes(ctx.out / job.relpath, data)
        atomic_write_json(record_path(ctx.out, job), asdict(record))
    except OSError as e:
        # Raised in a worker process too: a UserError travels back through the pool intact.
        raise UserError(f"cannot write {ctx.out / job.relpath}: {e.strerror or e}") from None
    return record, True


def read_record(out: Location, job: ShardJob) -> ShardRecord | None:
    """The job's record in a folder or store; None if absent or unreadable."""
    try:
        return ShardRecord(**json.loads(read_if_present(record_path(out, job)) or b""))
    except (OSError, ValueError, TypeError):
        return None


def completed_record(job: ShardJob, ctx: WriterContext) -> ShardRecord | None:
    """The record of a finished shard of this config whose file is intact, else None."""
    record = read_record(ctx.out, job)
    if record is None or record.fingerprint != ctx.fingerprint or record.count != job.count:
        return None
    try:
        return record if sha256_file(ctx.out / job.relpath) == record.sha256 else None
    except OSError:
        return None


def _length_histogram(labels: np.ndarray) -> list[int]:
    lengths = (labels != BLANK).sum(axis=1)
    return np.bincount(lengths, minlength=NUM_SLOTS + 1)[1:].tolist()


def is_stored(out: Location, job: ShardJob, record: ShardRecord) -> bool:
    """The job's shard is in the folder or store, with the record's size when it has one."""
    size = object_size(join(out, job.relpath))
    return size is not None and (record.size == 0 or size == record.size)
