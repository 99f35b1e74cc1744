"""`generate --out URL`: shards rendered in a local staging folder, each uploaded when done.

A finished shard is uploaded (one PUT: the object appears under its final name only when
complete), then its record, then its local files are removed: the staging folder only holds
the shards in flight. A shard counts as stored when its record (uploaded after it) has this
config's fingerprint and count and the object has the record's size (and so its sha256, which
every reader checks): a rerun uploads only what is missing or wrong. `finalize` writes the
manifest last, as for a folder; several nodes can generate into one bucket and prefix.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from data_gen.config import GenConfig
from data_gen.outdir import RUN_FILE, fingerprint, record_path, saved_fingerprint, write_run_file
from data_gen.plan import ShardJob
from data_gen.writer import ShardRecord, is_stored, read_record
from seqtrain.common.errors import UserError
from seqtrain.common.storage import join, remove, upload_file, write_json
from seqtrain.data.format import MANIFEST_NAME, shard_relpath


def unstored_jobs(cfg: GenConfig, jobs: list[ShardJob]) -> list[ShardJob]:
    """The jobs whose shard is not (correctly) in the store yet."""
    mark = fingerprint(cfg)
    return [job for job in jobs if not _stored(cfg.location, job, mark)]


def claim_store(cfg: GenConfig) -> None:
    """Refuse a prefix generated with another config unless --overwrite (which removes its
    manifest: its shards are then replaced as their records no longer match); record ours."""
    out = cfg.location
    saved = saved_fingerprint(out)
    if saved is not None and saved != fingerprint(cfg):
        if not cfg.overwrite:
            raise UserError(
                f"--out {out} holds a different config: choose another prefix or pass "
                f"--overwrite (see {join(out, RUN_FILE)})"
            )
        remove(join(out, MANIFEST_NAME))
    write_run_file(cfg)


def _stored(out: str, job: ShardJob, mark: str) -> bool:
    record = read_record(out, job)
    return (
        record is not None
        and record.fingerprint == mark
        and record.count == job.count
        and is_stored(out, job, record)
    )


def publish(out: str, staging: Path, record: ShardRecord) -> None:
    """Upload one staged shard, then its record; remove both local files."""
    relpath = shard_relpath(record.split, record.epoch, record.shard)
    shard = staging / relpath
    upload_file(shard, join(out, relpath))
    job = ShardJob(record.split, record.epoch, record.shard, record.count)
    write_json(record_path(out, job), asdict(record))
    shard.unlink()
    record_path(staging, job).unlink()
