"""Epoch checkpoints beside best and last (--keep-checkpoints K): checkpoints/epoch-NNNN holds
the state after epoch NNNN, and only the K most recent are kept.

At an epoch's end the state is saved once, into the first of its folders (`epoch_end_folders`):
the epoch checkpoint, then a new best, then `last`; the others become copies of it made of hard
links (`copy_checkpoint`), so an epoch checkpoint costs a few directory entries until `last`
moves on. Each folder appears complete or not at all (written aside, renamed into place), and
`last` moves last: a crash before it resumes from the previous `last` and redoes the epoch,
writing its epoch checkpoint again.

Pruning, by the main process only, after the epoch's save: every epoch folder but the K most
recent complete ones up to the current epoch is first renamed into `checkpoints/.pruning/` (one
atomic rename each, synced), then that folder is deleted. A crash in the middle leaves a half
deleted folder only under `.pruning/`, where no reader looks; the next save deletes it and
finishes the pruning. Epoch folders numbered after the current epoch belong to a timeline a
resume from an earlier checkpoint abandoned, and are pruned too; so are the leftovers of a crash
while one was written (`.epoch-NNNN.tmp`, `.epoch-NNNN.old`), unless such an `.old` is the only
complete copy of a kept epoch.
"""

from __future__ import annotations

import os
import re
import shutil
from functools import partial
from pathlib import Path

from seqtrain.common.atomic import fsync_dir
from seqtrain.common.errors import UserError
from seqtrain.components.checkpoint import find_checkpoint
from seqtrain.components.run_paths import RunPaths
from seqtrain.distributed import decided_on_main_process

# An epoch folder, or one of its siblings that saving and replacing it use.
_EPOCH_NAME = re.compile(r"\.?epoch-(\d+)(\.tmp|\.old)?")
_PRUNING = ".pruning"


def epoch_end_folders(paths: RunPaths, epoch: int, keep: int, improved: bool) -> list[Path]:
    """The checkpoint folders epoch `epoch`'s state goes to, in the order they must be written:
    its epoch checkpoint (when `keep`), best (when `improved`), last."""
    return [
        *([paths.epoch_checkpoint(epoch)] if keep else []),
        *([paths.best] if improved else []),
        paths.last,
    ]


def kept_epoch_checkpoints(paths: RunPaths, epoch: int, keep: int) -> list[Path]:
    """The complete checkpoints of the `keep` most recent epochs up to `epoch`, oldest first."""
    complete = []
    for number in sorted(_numbered(paths.checkpoints)):
        found = find_checkpoint(paths.epoch_checkpoint(number)) if number <= epoch else None
        if found is not None:
            complete.append(found)
    return complete[-keep:] if keep else []


def prune_epoch_checkpoints(paths: RunPaths, epoch: int, keep: int) -> None:
    """Collective: leave exactly the `keep` most recent epoch checkpoints up to `epoch`. The main
    process prunes; a failure ends every rank with the same one-line error."""
    decided_on_main_process(partial(_prune, paths, epoch, keep))


def _prune(paths: RunPaths, epoch: int, keep: int) -> None:
    trash = paths.checkpoints / _PRUNING
    try:
        shutil.rmtree(trash, ignore_errors=True)  # what a crash mid-pruning left
        kept = set(kept_epoch_checkpoints(paths, epoch, keep))
        doomed = [p for p in paths.checkpoints.iterdir() if _is_epoch(p) and p not in kept]
        if not doomed:
            return
        trash.mkdir(exist_ok=True)
        for path in doomed:
            os.replace(path, trash / path.name)
        fsync_dir(paths.checkpoints)  # the renames are on disk before anything is deleted
        shutil.rmtree(trash)
    except OSError as e:
        where = paths.checkpoints
        raise UserError(f"cannot remove old epoch checkpoints in {where}: {e}") from None


def _numbered(checkpoints: Path) -> set[int]:
    if not checkpoints.is_dir():
        return set()
    return {
        int(match[1])
        for match in map(_EPOCH_NAME.fullmatch, os.listdir(checkpoints))
        if match is not None
    }


def _is_epoch(path: Path) -> bool:
    return _EPOCH_NAME.fullmatch(path.name) is not None
