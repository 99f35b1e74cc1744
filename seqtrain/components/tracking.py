"""Experiment tracking: W&B through Accelerate's tracker, and reading an offline run back.

One training is one W&B run: its id is kept in the run folder and every resumed segment
continues it, on a step that never goes backwards (`LoggedSteps`). Accelerate's trackers are
no-ops off the main process, so callers never check ranks here.
W&B 0.31 offline writes only `run-<id>.wandb` (a LevelDB-style log of protobuf records) and
media files: `read_offline_run` decodes those records, since there is no summary/config JSON.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from PIL import Image

from seqtrain.common.atomic import atomic_write_json
from seqtrain.common.cliparse import config_to_dict
from seqtrain.common.errors import UserError
from seqtrain.common.storage import Location, join
from seqtrain.components.run_files import read_metrics
from seqtrain.components.run_paths import RunPaths
from seqtrain.components.trackers import log_to_run_folder
from seqtrain.components.wandb_settings import (
    hand_to_wandb,
    run_id_from_environment,
    wandb_files_dir,
)
from seqtrain.config import RunConfig
from seqtrain.data.format import MANIFEST_NAME, SPLITS, Manifest

WANDB = "wandb"
WANDB_SERVICE_ENV = "WANDB_SERVICE"
# The run folder's W&B run: its id, and the last step each key was logged at (JSON).


class LoggedSteps:
    """Keeps W&B's step from going backwards when a resumed segment replays steps.

    A resume restarts from a checkpoint that may be older than the last logged step. A key
    already logged at or after a step is not logged again there (a replayed point would be a
    duplicate, and W&B drops a step lower than its current one); a key not yet logged (an epoch
    whose evaluation the kill interrupted) is logged at its own step, or just after the last
    step the earlier segments used.

    What was logged comes, offline, from W&B's own records of the earlier segments: a killed
    process's W&B service loses the records it had not yet written, and those must be logged
    again. A segment whose records cannot be decoded (a damaged file) counts as one that wrote
    none, with a warning: its epochs are logged again from metrics.jsonl. Online, it comes from
    the run folder's record of each log call (written after the call), so the points the
    killed service had not yet sent stay missing.
    """

    def __init__(
        self, run_dir: Path, offline: bool, files_dir: Path | None = None, run_id: str | None = None
    ) -> None:
        """`files_dir`: where W&B writes (default: the run folder's `wandb/`); `run_id`: the
        id W&B must use (a sweep agent's), else the run folder's, else a new one."""
        self.path = RunPaths(run_dir).wandb_run
        state = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.run_id: str = run_id or state.get("id") or _new_run_id()
        self.last_steps: dict[str, int] = state.get("last_steps", {})
        if offline:
            files_dir = files_dir or RunPaths(run_dir).wandb_dir
            self.last_steps = _steps_in_records(files_dir, self.run_id)
        # Earlier segments used steps up to max(last_steps); this one starts after them.
        self.floor = max(self.last_steps.values(), default=-1) + 1
        self._save()  # the id is in the run folder before anything is logged

    def new_values(self, values: dict[str, Any], step: int) -> dict[str, Any]:
        return {k: v for k, v in values.items() if step > self.last_steps.get(k, -1)}

    def step_for(self, step: int) -> int:
        return max(step, self.floor)

    def logged(self, keys: Iterable[str], step: int, wandb_step: int) -> None:
        self.last_steps.update(dict.fromkeys(keys, step))
        self.floor = wandb_step  # later calls in this segment may share this step
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.path, {"id": self.run_id, "last_steps": self.last_steps})


def _steps_in_records(wandb_dir: Path, run_id: str) -> dict[str, int]:
    """The last step each history key has in run `run_id`'s offline segments under `wandb_dir`
    that can be decoded (see `LoggedSteps`); the folder may hold other runs' (a --wandb-dir)."""
    last: dict[str, int] = {}
    if not wandb_dir.is_dir():
        return last
    with contextlib.suppress(FileNotFoundError):
        for segment in _readable_segments(_offline_logs(wandb_dir, run_id)):
            for row in segment["history"]:
                last.update({key: row["_step"] for key in row if not key.startswith("_")})
    return last


def _readable_segments(logs: list[Path]) -> Iterator[dict[str, Any]]:
    """The segments of `logs` as `_read_log` reads them, leaving out (with a warning line) those
    that cannot be decoded: a resume must not fail on a damaged record of an earlier segment."""
    for log in logs:
        try:
            yield _read_log(log)
        except UnreadableLogError as e:
            print(
                f"seqtrain: warning: left out unreadable W&B offline records {e}; "
                "the epochs they held are logged again from metrics.jsonl",
                file=sys.stderr,
            )


# The main process's W&B step keeper (like Accelerate's trackers, one run per process).
_steps: LoggedSteps | None = None


def check_tracker_installed(cfg: RunConfig) -> None:
    """W&B asked for (--wandb-mode online/offline) but not installed is an error: Accelerate
    would drop the tracker with a warning, and the run would log nowhere."""
    if cfg.log.wandb_on and importlib.util.find_spec("wandb") is None:
        raise UserError(
            f"--wandb-mode {cfg.log.wandb_mode} needs the wandb package (pip install wandb); "
            "or pass --wandb-mode disabled"
        )


def start_tracking(
    accelerator: Accelerator, cfg: RunConfig, run_dir: Path, manifest: Manifest, fingerprint: str
) -> None:
    """Open the W&B run (main process only; Accelerate skips it elsewhere) with the config and
    the data it trains on: the run folder's run, continued (`resume="allow"`) when an earlier
    segment started it. `cfg.log` holds resolved settings (`wandb_settings`)."""
    global _steps
    _steps = None
    log = cfg.log
    if not accelerator.is_main_process:
        return
    if not log.wandb_on:
        accelerator.init_trackers(run_dir.name)  # the run folder's trackers only (`trackers`)
        return
    files_dir = wandb_files_dir(log, run_dir)
    _steps = LoggedSteps(run_dir, log.wandb_mode == "offline", files_dir, run_id_from_environment())
    # W&B's service announced by a parent process (a notebook, a launcher, a test runner that
    # used W&B) would hold this run's id beyond this process: after a SIGKILL the resume was
    # refused ("run ID ... is in use"). The run gets a service of its own, which ends with it.
    os.environ.pop(WANDB_SERVICE_ENV, None)
    files_dir.mkdir(parents=True, exist_ok=True)  # W&B falls back to a temporary folder
    dataset = dataset_summary(manifest, fingerprint)
    wandb_kwargs: dict[str, Any] = {
        "mode": log.wandb_mode,
        "dir": str(files_dir.parent),
        "name": run_dir.name,
        "entity": log.wandb_entity,
        "tags": list(log.wandb_tags or ()),
        "group": log.wandb_group,
        "notes": log.wandb_notes,
        "job_type": log.wandb_job_type,
        "id": _steps.run_id,
        "resume": "allow",
        # Given to wandb.init, not Accelerate's later config update: under a sweep the agent's
        # keys are locked, and that update would warn once per swept flag.
        "config": wandb_config(cfg, dataset),
    }
    hand_to_wandb(log)
    accelerator.init_trackers(log.wandb_project, init_kwargs={WANDB: wandb_kwargs})
    if log.wandb_log_data:
        accelerator.get_tracker(WANDB, unwrap=True).use_artifact(data_artifact(manifest, dataset))
    for record in read_metrics(run_dir):  # epochs an earlier segment's W&B service lost
        log_epoch(accelerator, record)


def wandb_config(cfg: RunConfig, dataset: dict[str, Any]) -> dict[str, Any]:
    """The W&B run config: every setting under its field's name (`lr`, `batch_size`), the name
    a sweep's parameter uses for it, so a swept value and seqtrain's are one key (a nested
    `model` section would be replaced by a swept `model`), and the data under `dataset`."""
    sections = config_to_dict(cfg).values()
    flat = {name: value for section in sections for name, value in section.items()}
    return {**flat, "dataset": dataset}


def dataset_summary(manifest: Manifest, fingerprint: str) -> dict[str, Any]:
    """What the run trains on: the shards' fingerprint (`resume_guard.data_fingerprint`), where
    they are, and the generator config that wrote them (manifest.json's `config`)."""
    return {
        "fingerprint": fingerprint,
        "location": _uri(manifest.root),
        "generator": manifest.config,
    }


def data_artifact(manifest: Manifest, dataset: dict[str, Any]) -> Any:
    """The shards and manifest.json as a W&B dataset artifact of references: named by the data's
    fingerprint, so the same shards anywhere are one artifact. Checksums are left to the
    fingerprint (W&B would read every local shard at start, and ask each store for its own)."""
    import wandb

    artifact = wandb.Artifact(f"shards-{dataset['fingerprint'][:16]}", type="dataset",
                              metadata=dataset)  # fmt: skip
    paths = [s["path"] for split in SPLITS for s in manifest.raw["splits"][split]["shards"]]
    for path in [MANIFEST_NAME, *paths]:
        artifact.add_reference(_uri(join(manifest.root, path)), name=path, checksum=False)
    return artifact


def _uri(location: Location) -> str:
    """A URL W&B's reference artifacts read: file:// for a local path; W&B knows gs://, not
    gcs://."""
    if isinstance(location, Path):
        return location.resolve().as_uri()
    if location.startswith("gcs://"):
        return "gs://" + location.removeprefix("gcs://")
    return location


def log_metrics(accelerator: Accelerator, values: dict[str, float], step: int) -> None:
    log_to_run_folder(accelerator, values, step)
    _log(accelerator, values, step, lambda new, at: _wandb(accelerator).log(new, step=at))


def log_epoch(accelerator: Accelerator, record: dict[str, Any]) -> None:
    """One finished epoch, from its metrics.jsonl record, at the epoch's last step."""
    values = {
        "epoch": record["epoch"],
        "val/loss": record["val_loss"],
        "val/exact_match": record["val_exact_match"],
        "train/epoch_loss": record["train_loss"],
        "epoch_seconds": record["epoch_seconds"],
    }
    for i, member in enumerate(record.get("members", ())):  # --members
        values[f"val/member{i}/loss"] = member["val_loss"]
        values[f"val/member{i}/exact_match"] = member["val_exact_match"]
    log_metrics(accelerator, values, step=record["step"])


def log_summary(accelerator: Accelerator, values: dict[str, Any]) -> None:
    """Final results go to the run summary (not history): they describe the run, not a step."""
    if _wandb_open(accelerator):
        run = accelerator.get_tracker(WANDB, unwrap=True)
        for key, value in values.items():
            run.summary[key] = value


def log_image(accelerator: Accelerator, key: str, path: Path, step: int) -> None:
    if _wandb_open(accelerator):
        with Image.open(path) as image:
            picture = image.convert("RGB")
        tracker = accelerator.get_tracker(WANDB)
        _log(accelerator, {key: [picture]}, step, lambda new, at: tracker.log_images(new, step=at))


def log_model(accelerator: Accelerator, export_dir: Path) -> None:
    """The exported best model as a W&B model artifact of this run (uploaded at sync when
    offline)."""
    if _wandb_open(accelerator):
        import wandb

        run = accelerator.get_tracker(WANDB, unwrap=True)
        artifact = wandb.Artifact(f"model-{run.id}", type="model")
        artifact.add_dir(str(export_dir))
        run.log_artifact(artifact, aliases=["best"])


def save_trace(accelerator: Accelerator, trace: Path) -> None:
    """A torch.profiler trace (--profile-steps) into the W&B run's files, under pytorch_traces/
    as W&B's own `wandb.profiler.torch_trace_handler` puts them (offline: kept with the run's
    files, uploaded by `wandb sync`)."""
    if _wandb_open(accelerator):
        files = Path(accelerator.get_tracker(WANDB, unwrap=True).dir) / "pytorch_traces"
        files.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trace, files / trace.name)


def finish_tracking(accelerator: Accelerator) -> None:
    """Close the W&B run and the process group (Accelerate does both in `end_training`)."""
    global _steps
    _steps = None
    accelerator.end_training()


def close_after_stop(accelerator: Accelerator, exit_code: int) -> None:
    """Close the W&B run of a run stopped by a signal (saved, to be resumed), marked preempted.

    SLURM signals every process of a step, W&B's service (wandb-core, a Go program whose runtime
    acts on SIGTERM whatever its parent blocks or ignores) included: it may already be gone.
    Then closing fails here with one warning line instead of in wandb's exit hook with a
    traceback, and the resume logs the epochs it missed from metrics.jsonl."""
    global _steps
    if _steps is None:  # W&B off, or not the main process
        return
    _steps = None
    import wandb

    run = accelerator.get_tracker(WANDB, unwrap=True)
    with contextlib.suppress(OSError):  # the teardown below says why
        run.mark_preempting()
        run.finish(exit_code=exit_code)
    try:
        wandb.teardown(exit_code)  # also takes wandb's exit hook off, whatever it raises
    except OSError as e:  # ConnectionResetError: the service died with the job
        print(f"seqtrain: warning: W&B's service was stopped with the job ({e}); "
              "the resume logs what it missed from metrics.jsonl", file=sys.stderr)  # fmt: skip


def _log(
    accelerator: Accelerator,
    values: dict[str, Any],
    step: int,
    send: Callable[[dict[str, Any], int], None],
) -> None:
    if _steps is None or not accelerator.is_main_process:
        return
    new = _steps.new_values(values, step)
    if new:
        at = _steps.step_for(step)
        send(new, at)
        _steps.logged(new, step, at)


def _wandb_open(accelerator: Accelerator) -> bool:
    """The W&B run is open here: the main process, with W&B among --report-to's trackers."""
    return accelerator.is_main_process and any(t.name == WANDB for t in accelerator.trackers)


def _wandb(accelerator: Accelerator) -> Any:
    return accelerator.get_tracker(WANDB)


def _new_run_id() -> str:
    """Eight lowercase hex characters: W&B's own ids are this short and plain."""
    return secrets.token_hex(4)


# --- reading an offline run back -------------------------------------------------------------

# The record log format W&B shares with LevelDB: a 7-byte file header, then 32 KiB blocks of
# chunks, each with a 7-byte header (crc32, length, type); a record spans FIRST..MIDDLE..LAST.
_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_IDENT, _MAGIC = b":W&B", 0xBEE1


class UnreadableLogError(ValueError):
    """An offline run log whose records cannot be decoded: `path: reason`."""


def _records(data: bytes) -> Iterator[bytes]:
    if len(data) < _FILE_HEADER.size or _FILE_HEADER.unpack_from(data)[:2] != (_IDENT, _MAGIC):
        raise ValueError("not a W&B transaction log (no W&B file header)")
    pos, parts = _FILE_HEADER.size, []
    while pos + _CHUNK_HEADER.size <= len(data):
        space_left = _BLOCK - pos % _BLOCK
        if space_left < _CHUNK_HEADER.size:  # a block's tail too short for a header is padding
            pos += space_left
            continue
        checksum, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        chunk = data[pos + _CHUNK_HEADER.size : pos + _CHUNK_HEADER.size + length]
        if kind == 0 and length == 0:  # zero fill at the end of a file still being written
            break
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != checksum:
            break  # a torn tail (killed writer): keep what was complete
        pos += _CHUNK_HEADER.size + length
        parts.append(chunk)
        if kind in (_FULL, _LAST):
            yield b"".join(parts)
            parts = []


def _item_key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _history_value(item: Any) -> Any:
    """History items carry typed values in 0.31 (value_json in older writers)."""
    kind = item.WhichOneof("value")
    if kind in (None, "none"):
        return json.loads(item.value_json) if item.value_json else None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)


def read_offline_run(run_dir: str | Path, wait_s: float = 30.0) -> dict[str, Any]:
    """Read a W&B offline run folder (`.../wandb/offline-run-*`) or a folder holding one.

    Returns {"id": run id, "run": the run's own fields (name, project, entity, group, job_type,
    notes, tags, sweep_id), "config": nested dict, "history": [row dicts], "summary": dict,
    "artifacts": [(name, type)], "media": [absolute paths of media files], "finished": whether
    the log holds the run's exit record}; the last run is used if several exist. W&B's service
    process may still be writing the log after `run.finish()` has returned (or the training
    process has ended), so an unfinished log is read again until it is finished or `wait_s`
    seconds have passed; a run killed before its end is then returned as far as it got. A log
    that cannot be decoded (a damaged file) raises UnreadableLogError.
    """
    deadline = time.monotonic() + wait_s
    while True:
        run = _read_log(_offline_logs(run_dir)[-1])
        if run["finished"] or time.monotonic() >= deadline:
            return run
        time.sleep(0.1)


def read_offline_segments(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every offline run under `run_dir`, oldest first, as `read_offline_run` reads one: a
    resumed training writes one folder per segment, all with the same run id."""
    return [_read_log(log) for log in _offline_logs(run_dir)]


def _offline_logs(run_dir: str | Path, run_id: str = "*") -> list[Path]:
    run_dir = Path(run_dir)
    # Folder names start with the segment's start time, so sorting orders them in time.
    logs = sorted(run_dir.glob(f"run-{run_id}.wandb")) or sorted(
        run_dir.glob(f"**/offline-run-*/run-{run_id}.wandb")
    )
    if not logs:
        raise FileNotFoundError(f"no W&B offline run under {run_dir}")
    return logs


def _read_log(log: Path) -> dict[str, Any]:
    """One segment's log decoded (see `read_offline_run`); UnreadableLogError if it cannot be."""
    from google.protobuf.message import DecodeError

    try:
        return _decode_log(log)
    except (OSError, ValueError, DecodeError) as e:
        raise UnreadableLogError(f"{log}: {e}") from None


def _decode_log(log: Path) -> dict[str, Any]:
    from wandb.proto import wandb_internal_pb2 as pb  # heavy import, only for reading back

    run_id = ""
    fields: dict[str, Any] = {}
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    artifacts: list[tuple[str, str]] = []
    finished = False
    for raw in _records(log.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            fields = _run_fields(record.run)
            config.update(_config_items(record.run.config.update))
        elif kind == "config":
            config.update(_config_items(record.config.update))
        elif kind == "history":
            history.append({_item_key(i): _history_value(i) for i in record.history.item})
        elif kind == "summary":
            summary.update({_item_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "artifact":
            artifacts.append((record.artifact.name, record.artifact.type))
        elif kind == "exit":
            finished = True
    media = sorted(p for p in (log.parent / "files" / "media").rglob("*") if p.is_file())
    return {
        "id": run_id,
        "run": fields,
        "config": config,
        "history": history,
        "summary": summary,
        "artifacts": artifacts,
        "media": media,
        "finished": finished,
    }


def _run_fields(run: Any) -> dict[str, Any]:
    return {
        "name": run.display_name,
        "project": run.project,
        "entity": run.entity,
        "group": run.run_group,
        "job_type": run.job_type,
        "notes": run.notes,
        "tags": list(run.tags),
        "sweep_id": run.sweep_id,
    }


def _config_items(items: Any) -> dict[str, Any]:
    """W&B stores each config value as {"value": ...}; unwrap it, skip its own `_wandb` key."""
    out = {}
    for item in items:
        key = _item_key(item)
        if key != "_wandb":
            value = json.loads(item.value_json)
            out[key] = value.get("value", value) if isinstance(value, dict) else value
    return out
