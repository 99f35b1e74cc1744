"""The output folder: its config fingerprint, where records live, and claiming it for a run.

`OUT/generate.json` records the config that determines the shard bytes. A rerun with the same
config resumes; a different config in a non-empty folder is refused unless --overwrite.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import data_gen
from data_gen.config import GenConfig
from data_gen.plan import ShardJob
from seqtrain.common.cliparse import config_from_dict, config_to_dict
from seqtrain.common.errors import UserError
from seqtrain.common.storage import Location, join, read_if_present, read_json, write_json
from seqtrain.data.format import MANIFEST_NAME, SPLITS

RUN_FILE = "generate.json"
RECORDS_DIR = "records"
GENERATOR = {"name": "seqtrain-data", "version": data_gen.__version__}
# The fields that decide the bytes of the shards; paths, workers and node layout do not.
OUTPUT_FIELDS = (
    "train_size",
    "val_size",
    "test_size",
    "epochs",
    "shard_size",
    "chunk_size",
    "length_weights",
    "seed",
)


def output_config(cfg: GenConfig) -> dict:
    full = config_to_dict(cfg)
    return {name: full[name] for name in OUTPUT_FIELDS}


def fingerprint(cfg: GenConfig) -> str:
    text = json.dumps({"generator": GENERATOR, "config": output_config(cfg)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(out: Location, job: ShardJob) -> Location:
    return join(out, f"{RECORDS_DIR}/{job.relpath}.json")


def read_run_config(out: Location) -> GenConfig:
    """The config a folder or store was generated with (for finalize)."""
    saved = read_json(join(out, RUN_FILE), f"run `seqtrain-data generate --out {out}`")
    num_nodes = saved.get("num_nodes", 1)
    return config_from_dict(GenConfig, {**saved["config"], "out": str(out), "num_nodes": num_nodes})


def claim(cfg: GenConfig, planned: list[ShardJob]) -> None:
    """Make OUT ours for this config, or raise a one-line error; never touches foreign files."""
    out = cfg.location
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    saved = saved_fingerprint(out)
    mine = fingerprint(cfg)
    # Without generate.json, a folder holding only our own entries is a sibling node's claim in
    # progress (array tasks start together): not foreign.
    differs = saved != mine if saved else out.is_dir() and bool(foreign_entries(out))
    if differs:
        if not cfg.overwrite:
            what = "a different config" if saved else "files not made by seqtrain-data"
            raise UserError(
                f"--out {out} holds {what}: choose an empty folder or pass --overwrite "
                f"(see {out / RUN_FILE})"
            )
        _remove_stale(out, planned)
    out.mkdir(parents=True, exist_ok=True)
    write_run_file(cfg)


def foreign_entries(out: Path) -> list[str]:
    """Names in OUT that seqtrain-data does not write (its temp files included as its own)."""
    ours = {RUN_FILE, MANIFEST_NAME, RECORDS_DIR, *SPLITS}
    temp_prefixes = tuple(f".{name}." for name in ours)  # seqtrain.common.atomic's temp names
    return [
        p.name
        for p in out.iterdir()
        if p.name not in ours and not (p.name.startswith(temp_prefixes) and p.name.endswith(".tmp"))
    ]


def write_run_file(cfg: GenConfig) -> None:
    write_json(
        join(cfg.location, RUN_FILE),
        # num_nodes is not part of the fingerprint: it only tells finalize who owns what.
        {
            "generator": GENERATOR,
            "config": output_config(cfg),
            "fingerprint": fingerprint(cfg),
            "num_nodes": cfg.num_nodes,
        },
    )


def saved_fingerprint(out: Location) -> str | None:
    """The fingerprint in OUT/generate.json, None without a readable one."""
    try:
        return json.loads(read_if_present(join(out, RUN_FILE)) or b"")["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_stale(out: Path, planned: list[ShardJob]) -> None:
    """--overwrite: drop the old manifest and our shards/records the new plan does not contain.

    Planned shards are left in place: their records carry the old fingerprint, so they get
    regenerated. Only files not in the plan are removed, so concurrent nodes cannot collide.
    """
    keep = {job.relpath for job in planned}
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for split in SPLITS:
        for shard in (out / split).glob(f"{split}-e*-s*.tar"):
            relpath = f"{split}/{shard.name}"
            if relpath not in keep:
                shard.unlink(missing_ok=True)
                (out / RECORDS_DIR / f"{relpath}.json").unlink(missing_ok=True)
