"""Experiment tracking: W&B through Accelerate's tracker, and reading an offline run back.

Accelerate's trackers are no-ops off the main process, so callers never check ranks here.
W&B 0.31 offline writes only `run-<id>.wandb` (a LevelDB-style log of protobuf records) and
media files: `read_offline_run` decodes those records, since there is no summary/config JSON.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from PIL import Image

from seqtrain.cliparse import config_to_dict
from seqtrain.config import RunConfig

WANDB = "wandb"


def start_tracking(accelerator: Accelerator, cfg: RunConfig, run_dir: Path) -> None:
    """Open the W&B run (main process only; Accelerate skips it elsewhere) with the config."""
    if cfg.log.wandb_mode == "disabled":
        return
    wandb_kwargs: dict[str, Any] = {
        "mode": cfg.log.wandb_mode,
        "dir": str(run_dir),
        "name": run_dir.name,
        "entity": cfg.log.wandb_entity,
        "tags": list(cfg.log.wandb_tags),
    }
    accelerator.init_trackers(
        cfg.log.wandb_project, config=config_to_dict(cfg), init_kwargs={WANDB: wandb_kwargs}
    )


def log_metrics(accelerator: Accelerator, values: dict[str, float], step: int) -> None:
    accelerator.log(values, step=step)


def log_summary(accelerator: Accelerator, values: dict[str, Any]) -> None:
    """Final results go to the run summary (not history): they describe the run, not a step."""
    if accelerator.is_main_process and accelerator.trackers:
        run = accelerator.get_tracker(WANDB, unwrap=True)
        for key, value in values.items():
            run.summary[key] = value


def log_image(accelerator: Accelerator, key: str, path: Path, step: int) -> None:
    if accelerator.is_main_process and accelerator.trackers:
        with Image.open(path) as image:
            accelerator.get_tracker(WANDB).log_images({key: [image.convert("RGB")]}, step=step)


def finish_tracking(accelerator: Accelerator) -> None:
    """Close the W&B run and the process group (Accelerate does both in `end_training`)."""
    accelerator.end_training()


# --- reading an offline run back -------------------------------------------------------------

# The record log format W&B shares with LevelDB: a 7-byte file header, then 32 KiB blocks of
# chunks, each with a 7-byte header (crc32, length, type); a record spans FIRST..MIDDLE..LAST.
_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_IDENT, _MAGIC = b":W&B", 0xBEE1


def _records(data: bytes) -> Iterator[bytes]:
    ident, magic, _version = _FILE_HEADER.unpack_from(data, 0)
    if ident != _IDENT or magic != _MAGIC:
        raise ValueError("not a W&B transaction log")
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


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """Read a W&B offline run folder (`.../wandb/offline-run-*`) or a folder holding one.

    Returns {"config": nested dict, "history": [row dicts], "summary": dict,
    "media": [absolute paths of media files]}; the last run is used if several exist.
    """
    from wandb.proto import wandb_internal_pb2 as pb  # heavy import, only for reading back

    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb")) or sorted(
        run_dir.glob("**/offline-run-*/run-*.wandb")
    )
    if not logs:
        raise FileNotFoundError(f"no W&B offline run under {run_dir}")
    log = logs[-1]
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for raw in _records(log.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update(_config_items(record.run.config.update))
        elif kind == "config":
            config.update(_config_items(record.config.update))
        elif kind == "history":
            history.append({_item_key(i): _history_value(i) for i in record.history.item})
        elif kind == "summary":
            summary.update({_item_key(i): json.loads(i.value_json) for i in record.summary.update})
    media = sorted(p for p in (log.parent / "files" / "media").rglob("*") if p.is_file())
    return {"config": config, "history": history, "summary": summary, "media": media}


def _config_items(items: Any) -> dict[str, Any]:
    """W&B stores each config value as {"value": ...}; unwrap it, skip its own `_wandb` key."""
    out = {}
    for item in items:
        key = _item_key(item)
        if key != "_wandb":
            value = json.loads(item.value_json)
            out[key] = value.get("value", value) if isinstance(value, dict) else value
    return out
