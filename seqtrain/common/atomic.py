"""Atomic file writes (a file under its final name is always complete), and checked JSON reads.

A write is durable once it returns: the file's data is synced before the rename, and the folder
it is renamed into after it, so a power loss leaves the old file or the new one, complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from seqtrain.common.errors import UserError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync and rename it into place, then
    fsync the folder (the rename itself).

    On any error the temporary file is removed and whatever was at `path` stays untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_dir(folder: str | os.PathLike) -> None:
    """Sync `folder`'s entries to disk: until then a power loss can undo a rename into it (or
    out of it) that has already returned."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some FUSE and network file systems cannot sync a folder; they have nothing to flush.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Sync every file and folder below `folder` (written by code that does not sync, such as
    torch.save), so that renaming `folder` into place publishes complete files."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def read_json_object(path: str | os.PathLike, missing: str = "") -> dict:
    """A JSON object from `path`; a missing, unreadable or non-object file is one UserError
    line (`missing`, if given, is the hint for a missing file)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found{': ' + missing if missing else ''}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
