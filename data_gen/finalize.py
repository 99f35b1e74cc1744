"""`seqtrain-data finalize OUT`: merge every node's shard records into manifest.json."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tyro

from data_gen.config import GenConfig
from data_gen.mnist import MD5
from data_gen.outdir import GENERATOR, fingerprint, output_config, read_run_config
from data_gen.plan import node_jobs, plan_jobs
from data_gen.writer import ShardRecord, is_stored, read_record
from seqtrain.common.errors import UserError
from seqtrain.common.storage import Location, join, write_json
from seqtrain.data.format import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, NUM_CLASSES, SPLITS

_SHOW_MISSING = 5


@dataclass
class FinalizeConfig:
    """Write OUT/manifest.json once every node of a multi-node `generate` has finished."""

    out: tyro.conf.Positional[str]
    """The --out folder or URL all nodes wrote to."""


def finalize(out: Location) -> Location:
    """Check that every planned shard has a record of this config and is present in the
    folder or store (with the record's size where it is known), then write the manifest."""
    cfg = read_run_config(out)
    jobs = plan_jobs(cfg)
    mine = fingerprint(cfg)
    records: list[ShardRecord] = []
    missing: list[str] = []
    for job in jobs:
        record = read_record(out, job)
        if record is None or record.fingerprint != mine or not is_stored(out, job, record):
            missing.append(job.relpath)
        else:
            records.append(record)
    if missing:
        ranks = _ranks_of(missing, cfg)
        shown = ", ".join(missing[:_SHOW_MISSING]) + (", ..." if missing[_SHOW_MISSING:] else "")
        raise UserError(
            f"{len(missing)} of {len(jobs)} shards missing in {out} ({shown}): they belong to "
            f"--node-rank {ranks} of --num-nodes {cfg.num_nodes}; rerun generate for those ranks"
        )
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "generator": GENERATOR,
        "config": output_config(cfg),
        "mnist_md5": MD5,
        "samples_per_epoch": {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size},
        "splits": {split: _split_entry(split, records) for split in SPLITS},
    }
    path = join(out, MANIFEST_NAME)
    try:
        write_json(path, manifest)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    print(f"wrote {path}: {len(records)} shards")
    return path


def _split_entry(split: str, records: list[ShardRecord]) -> dict:
    mine = [r for r in records if r.split == split]
    return {
        "epochs": len({r.epoch for r in mine}),
        "shards": [
            {"path": r.path, "epoch": r.epoch, "count": r.count, "sha256": r.sha256} for r in mine
        ],
        "label_histogram": _total([r.label_histogram for r in mine], NUM_CLASSES),
        "length_histogram": _total([r.length_histogram for r in mine], 3),
    }


def _total(histograms: list[list[int]], width: int) -> list[int]:
    return np.sum(np.asarray(histograms, dtype=np.int64).reshape(-1, width), axis=0).tolist()


def _ranks_of(missing: list[str], cfg: GenConfig) -> str:
    """Which --node-rank values own the missing shards (a comma list, e.g. "1,3")."""
    missing_set = set(missing)
    jobs = plan_jobs(cfg)
    ranks = [
        rank
        for rank in range(cfg.num_nodes)
        if any(j.relpath in missing_set for j in node_jobs(jobs, cfg.num_nodes, rank))
    ]
    return ",".join(map(str, ranks))
