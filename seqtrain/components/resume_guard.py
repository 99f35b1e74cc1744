"""Resume checks what it resumes: the same data and the settings the checkpoint was trained with.

Every checkpoint records the run's identity: a fingerprint of the shards (their manifest
entries: path, generator epoch, count, sha256; not the folder they live in, so a copy on
another disk is the same data) and the settings that shape the sample stream and the
optimisation. A resume whose data or settings differ is refused with one line naming each
difference (old -> new) unless --accept-changes. The number of processes is not part of it:
a job may resume on another number of processes. With --global-batch-size the global batch is
guarded and the per-process --batch-size is not (it follows the number of processes); without
it, --batch-size is.

Which checkpoint to resume from, and the check, are decided on the main process only and
broadcast, so all ranks resume from the same one or fail with the same line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from seqtrain.common.errors import UserError
from seqtrain.components.checkpoint import IDENTITY_KEY, checkpoint_meta, resolve_resume
from seqtrain.config import OptimConfig, RunConfig
from seqtrain.data.format import SPLITS, Manifest
from seqtrain.distributed import decided_on_main_process

# (section, field) of the settings that change what an optimizer step does with its samples, or
# how an epoch is shuffled. Speed options (precision, compile, channels-last, loader workers,
# micro-batches, --stage-on-device) and the number of processes are left out on purpose: the
# sample order does not depend on them (`seqtrain.data.position`). Every optimizer setting
# counts. The model is checked apart: another model's checkpoint cannot be loaded, so it cannot
# be accepted.
GUARDED_SETTINGS = (
    ("data", "batch_size"),
    ("data", "global_batch_size"),
    ("data", "canonical_streams"),
    ("data", "shuffle_buffer"),
    *(("optim", f.name) for f in dataclasses.fields(OptimConfig)),
    ("train", "epochs"),
    ("train", "steps_per_epoch"),
    ("train", "early_stop_patience"),
    ("train", "best_metric"),  # which epochs count as improving: best, early stopping
    ("train", "seed"),
    ("train", "members"),  # another number of members cannot load (see `_checked_resume`)
    ("train", "member_seeds"),
)


def data_fingerprint(manifest: Manifest) -> str:
    """sha256 over every split's shard entries: equal exactly when the shards' bytes are."""
    entries = [
        [split, s["path"], s["epoch"], s["count"], s["sha256"]]
        for split in SPLITS
        for s in manifest.raw["splits"][split]["shards"]
    ]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def run_identity(cfg: RunConfig, manifest: Manifest) -> dict[str, Any]:
    """What a checkpoint records (JSON-safe): the data fingerprint and the guarded settings."""
    settings = {
        _flag(name): _json_value(getattr(getattr(cfg, section), name))
        for section, name in GUARDED_SETTINGS
    }
    if cfg.data.global_batch_size is not None:
        del settings["--batch-size"]  # G / processes: free to follow the number of processes
    return {"data": data_fingerprint(manifest), "settings": settings}


def identity_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Each difference as `what old -> new` (a setting the checkpoint lacks is not compared:
    it came with a newer seqtrain and the old run had no say in it)."""
    changes = []
    if recorded.get("data") != current["data"]:
        changes.append(f"data (shards) {_short(recorded.get('data'))} -> {_short(current['data'])}")
    old_settings = recorded.get("settings", {})
    for flag, new in current["settings"].items():
        if flag in old_settings and old_settings[flag] != new:
            changes.append(f"{flag} {old_settings[flag]} -> {new}")
    return changes


def decide_resume(cfg: RunConfig, run_dir: Path, identity: dict[str, Any]) -> Path | None:
    """Collective: the checkpoint to resume from (None: a fresh start), the same on every
    rank; refused on every rank when its data or settings differ, unless --accept-changes."""
    resume_from = decided_on_main_process(lambda: _checked_resume(cfg, run_dir, identity))
    # A permission for this start only: later checkpoints record the new identity.
    cfg.train.accept_changes = False
    return resume_from


def _checked_resume(cfg: RunConfig, run_dir: Path, identity: dict[str, Any]) -> Path | None:
    folder = resolve_resume(cfg.train.resume, run_dir)
    if folder is None:
        return None
    # Another model's weights cannot be loaded at all: that is no change to accept.
    recorded = checkpoint_meta(folder, cfg.model.model).get(IDENTITY_KEY)
    if recorded is None:
        tqdm.write(f"checkpoint {folder} records no data or settings (older seqtrain): unchecked")
        return folder
    members = recorded.get("settings", {}).get("--members", 1)
    if members != cfg.train.members:  # stacked weights of another shape: nothing to accept
        raise UserError(
            f"resume from {folder} refused: it holds --members {members}, not {cfg.train.members}"
        )
    changes = identity_changes(recorded, identity)
    if changes and not cfg.train.accept_changes:
        raise UserError(
            f"resume from {folder} refused: it was trained with other "
            f"{'; '.join(changes)}; pass --accept-changes to continue with these, or start a "
            "new run with another --run-name"
        )
    if changes:
        tqdm.write(f"resuming with accepted changes: {'; '.join(changes)}")
    return folder


def _json_value(value: Any) -> Any:
    """A tuple as the list JSON reads back, so a recorded setting compares equal."""
    return list(value) if isinstance(value, tuple) else value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _short(fingerprint: str | None) -> str:
    return "unrecorded" if fingerprint is None else fingerprint[:12]
