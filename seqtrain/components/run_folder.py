"""One owner per run folder: a lock held for the run's whole life, and no silent overwrite.

The main process takes an exclusive POSIX record lock (`fcntl.lockf`) on `RUN/.owner.lock`
and writes its holder (host, pid, start time) into it. The kernel drops the lock when the
process ends however it ends (SIGKILL included), so a lock never outlives its holder. A POSIX
lock, not `flock`, because it belongs to the process: loader workers forked from the trainer
do not inherit it and cannot keep it held after the trainer died. Over NFS the lock goes
through the server's lock manager (NFSv4, or NLM with v3): the run folder's file system must
support locking (`nolock` mounts do not); a client that loses contact with the server past its
lease loses the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from datetime import datetime
from pathlib import Path
from typing import IO

from seqtrain.common.errors import UserError
from seqtrain.components.run_paths import MARKERS, OUTPUTS, RunPaths
from seqtrain.config import RunConfig
from seqtrain.distributed import decided_on_main_process

# The lock of the run folder this process owns: at most one, as one process trains one run.
_held: IO[str] | None = None


def claim_run_folder(cfg: RunConfig, run_dir: Path) -> None:
    """Collective: make this job the run folder's one owner, or fail on every rank together.

    A second trainer on a live folder fails naming the holder; a new run (no --resume) into a
    folder holding a run is refused unless --overwrite, which then removes the old outputs.
    """
    decided_on_main_process(lambda: _claim(cfg, run_dir))
    # A permission for this start only: the saved config.yaml must not overwrite when rerun.
    cfg.train.overwrite = False


def release_run_folder() -> None:
    """Drop the lock (at the run's end; the process's end drops it anyway)."""
    global _held
    if _held is not None:
        _held.close()
        _held = None


def _claim(cfg: RunConfig, run_dir: Path) -> None:
    _lock(run_dir)
    if cfg.train.resume is not None or not _holds_run(run_dir):
        return
    if not cfg.train.overwrite:
        release_run_folder()
        raise UserError(
            f"run folder {run_dir} already holds a run; continue it with --resume auto, "
            "start a new one with another --run-name, or replace it with --overwrite"
        )
    for name in OUTPUTS:
        _remove(run_dir / name)


def _lock(run_dir: Path) -> None:
    global _held
    release_run_folder()  # a previous run of this process (tests train several in one)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Opened without truncation: the holder's record must survive a failed attempt.
    f = open(RunPaths(run_dir).lock, "a+")  # noqa: SIM115 - held open for the run's life
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = _holder_text(f.read())
        f.close()
        raise UserError(
            f"run folder {run_dir} is in use by another trainer ({holder}); wait for it to "
            "end, or choose another --run-name"
        ) from None
    # Written in place, never renamed: the lock belongs to this file, not to its name.
    f.seek(0)
    f.truncate()
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    f.write(json.dumps(record) + "\n")
    f.flush()
    _held = f


def _holder_text(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):  # the holder is writing it this very moment
        return "holder not yet recorded"


def _holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in MARKERS)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
