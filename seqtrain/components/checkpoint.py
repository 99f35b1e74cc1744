"""Checkpoints: Accelerate's `save_state` written aside and renamed into place only when complete.

A checkpoint folder holds Accelerate's files (model, optimizer, registered objects, one RNG file
per rank) plus `seqtrain_checkpoint.json` (model name and the global `Position`), written last:
a folder without it is incomplete. Replacing a checkpoint renames the old one to
`.<name>.old` first, so a crash at any moment leaves either the old or the new checkpoint
findable by `find_checkpoint`; the new one's files and the renames are synced to disk, so a
power loss does too.

Checkpoints load on any number of processes: model weights are saved with prefix-free keys
(no DDP `module.`, no torch.compile `_orig_mod.`; older checkpoints holding them are stripped
on load), the optimizer and registered states are process-independent, the position is global,
and a rank without a saved RNG state (more processes than at saving) gets a derived one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from seqtrain.common.atomic import atomic_write_json, fsync_dir, fsync_tree
from seqtrain.common.errors import UserError
from seqtrain.components.run_paths import RunPaths
from seqtrain.data.position import Position, per_process_order
from seqtrain.models.state import prefix_free

if TYPE_CHECKING:  # keeps Accelerate out of `seqtrain.load_model`, which reads checkpoints too
    from accelerate import Accelerator
    from torch import nn

    from seqtrain.components.weight_average import WeightAverage

__all__ = ["Position"]  # the position lives with the data it counts; checkpoints carry it

META_NAME = "seqtrain_checkpoint.json"
IDENTITY_KEY = "identity"  # the data and settings trained with (see `resume_guard`)
AUTO = "auto"
# What writing a checkpoint raises when the disk is full: OSError from Python, RuntimeError
# from torch.save ("PytorchStreamWriter failed writing file"), SafetensorError from safetensors.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def save_checkpoint(
    accelerator: Accelerator,
    folder: Path,
    model_name: str,
    position: Position,
    identity: dict[str, Any] | None = None,
    average: WeightAverage | None = None,
) -> None:
    """Collective: every rank must call it (`save_state` writes per-rank RNG files).
    `identity` (data and settings, see `resume_guard`) is recorded for resume's check;
    `average` (--ema-decay) is saved beside the weights."""
    tmp = _sibling(folder, "tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    hook = accelerator.register_save_state_pre_hook(_prefix_free_weights)
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if average is not None:
                average.save(tmp)
            meta = {"model": model_name, **position.to_json(), IDENTITY_KEY: identity}
            atomic_write_json(tmp / META_NAME, meta)
            _replace(tmp, folder)  # a full disk may show only when the files are synced
    except WRITE_ERRORS as e:  # a full disk, a quota, a file size limit
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write checkpoint {folder}: {_write_error(e)}") from None
    finally:
        hook.remove()
    accelerator.wait_for_everyone()


def copy_checkpoint(accelerator: Accelerator, source: Path, folder: Path) -> None:
    """Collective: `folder` becomes a copy of the complete checkpoint `source` (e.g. best),
    made of hard links where the file system allows: a checkpoint's files are never written
    in place (every save writes new files aside), so the two can share them."""
    if accelerator.is_main_process:
        tmp = _sibling(folder, "tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, copy_function=_link_or_copy)
        _replace(tmp, folder)
    accelerator.wait_for_everyone()


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # no hard links here (some network and FUSE file systems, a link limit)
        shutil.copy2(source, target)


def find_checkpoint(folder: Path) -> Path | None:
    """`folder` if complete, else the old copy a crash mid-replacement left, else None."""
    for candidate in (folder, _sibling(folder, "old")):
        if (candidate / META_NAME).is_file():
            return candidate
    return None


def best_to_test(paths: RunPaths) -> Path:
    """The run's complete `best` checkpoint, or a UserError saying why none."""
    best = find_checkpoint(paths.best)
    if best is None:
        raise UserError(
            f"no best checkpoint in {paths.checkpoints}: no epoch had a finite val loss"
        )
    return best


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """`--resume auto`: the run folder's last checkpoint if any (a fresh start otherwise)."""
    if resume is None:
        return None
    if resume == AUTO:
        return find_checkpoint(RunPaths(run_dir).last)
    found = find_checkpoint(Path(resume))
    if found is None:
        raise UserError(f"--resume {resume}: not a complete seqtrain checkpoint folder")
    return found


def checkpoint_meta(folder: Path, model_name: str) -> dict[str, Any]:
    """The checkpoint's `seqtrain_checkpoint.json`, once it is known to hold `model_name`."""
    meta = json.loads((folder / META_NAME).read_text())
    if meta["model"] != model_name:
        raise UserError(
            f"checkpoint {folder} is of model {meta['model']!r}, not --model {model_name!r}"
        )
    return meta


def load_checkpoint(
    accelerator: Accelerator, folder: Path, model_name: str, seed: int = 0
) -> Position:
    """Collective: restore everything `save_checkpoint` saved (but a weight average: see
    `WeightAverage.load`), on any number of processes; returns where to continue. A rank the
    checkpoint has no RNG state for is seeded from (`seed`, its index, the checkpoint's step)."""
    meta = checkpoint_meta(folder, model_name)
    position = _position(folder, meta)
    _check_scaler_state(accelerator, folder)
    hook = accelerator.register_load_state_pre_hook(_load_prefix_free(accelerator))
    try:
        accelerator.load_state(str(folder))
    finally:
        hook.remove()
    if not (folder / f"random_states_{accelerator.process_index}.pkl").is_file():
        # Imported here: Accelerate stays out of `seqtrain.load_model`'s imports.
        from seqtrain.distributed import seed_resumed_rank

        seed_resumed_rank(seed, accelerator.process_index, position.step)
    return position


def _position(folder: Path, meta: dict) -> Position:
    if per_process_order(meta):
        raise UserError(
            f"checkpoint {folder} is from inside an epoch, saved by an older seqtrain whose sample "
            "order depended on the number of processes: resume it with that version, or from an "
            "epoch-end checkpoint"
        )
    if "segments" in meta:
        return Position.from_json(meta)
    # Written before positions were global: only an epoch boundary can be placed.
    if meta.get("batches_done", 0):
        raise UserError(
            f"checkpoint {folder} is from inside an epoch, saved by an older seqtrain with a "
            "per-process position: resume it with that version, or from an epoch-end checkpoint"
        )
    return Position(meta["epoch"], meta["step"])


def _prefix_free_weights(models: list, weights: list[dict], output_dir: str) -> None:
    """Save hook: the weights Accelerate is about to write, with prefix-free keys."""
    # An OrderedDict, as a state dict is: Accelerate only then makes tensors contiguous
    # (channels-last weights are not) and drops shared ones before writing safetensors.
    weights[:] = [OrderedDict(prefix_free(state)) for state in weights]


def _load_prefix_free(accelerator: Accelerator):
    """Load hook: load each model file into the bare model (keys stripped of wrapper prefixes,
    so checkpoints of wrapped and bare models both fit), then leave nothing for Accelerate."""

    def hook(models: list[nn.Module], input_dir: str) -> None:
        for i, model in enumerate(models):
            name = "model.safetensors" if i == 0 else f"model_{i}.safetensors"
            state = prefix_free(load_file(Path(input_dir) / name, device="cpu"))
            accelerator.unwrap_model(model).load_state_dict(state)
        models.clear()

    return hook


def _check_scaler_state(accelerator: Accelerator, folder: Path) -> None:
    """fp16 restores a gradient scaler that only fp16 runs save: resuming a bf16 or fp32
    checkpoint under fp16 would otherwise end in a traceback about a missing file."""
    from accelerate.utils.constants import SCALER_NAME

    if accelerator.scaler is not None and not (folder / SCALER_NAME).is_file():
        raise UserError(
            f"checkpoint {folder} holds no fp16 gradient-scaler state (it was trained with "
            "--mixed-precision bf16 or no): resume it with that precision, or start a new run"
        )


def _write_error(e: BaseException) -> str:
    """One line: the OS reason, or the first line of torch's/safetensors' message."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return (str(e).splitlines() or [type(e).__name__])[0]


def _sibling(folder: Path, kind: str) -> Path:
    return folder.with_name(f".{folder.name}.{kind}")


def _replace(complete: Path, folder: Path) -> None:
    """Swap `complete` in as `folder`, durably: its files are on disk before it is renamed
    into place, and the rename is on disk before the old copy is removed."""
    fsync_tree(complete)
    old = _sibling(folder, "old")
    if folder.exists():  # complete (only ever renamed into place), so `old` is redundant
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    # Else a crash mid-replacement may have left `old` as the only complete copy: keep it
    # until `complete` is in place.
    os.replace(complete, folder)
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
