"""Durable publishing: a file or checkpoint folder renamed into a run folder is on disk (its
data and the rename) once the call returns, so a power loss cannot undo it."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from seqtrain.common.atomic import atomic_write_json
from seqtrain.components.checkpoint import META_NAME, copy_checkpoint


@pytest.fixture
def disk_events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path]]:
    """Every rename (its destination) and every fsync (the synced path), in order."""
    events: list[tuple[str, Path]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        events.append(("rename", Path(dst)))

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def synced_after(events: list[tuple[str, Path]], renamed: Path) -> set[Path]:
    """The paths synced after the (last) rename onto `renamed`."""
    last = max(i for i, event in enumerate(events) if event == ("rename", renamed))
    return {path for kind, path in events[last + 1 :] if kind == "fsync"}


def synced_before(events: list[tuple[str, Path]], renamed: Path) -> set[Path]:
    first = events.index(("rename", renamed))
    return {path for kind, path in events[:first] if kind == "fsync"}


def test_atomic_write_syncs_its_folder_after_the_rename(
    disk_events: list[tuple[str, Path]], tmp_path: Path
) -> None:
    path = tmp_path / "run" / "test_metrics.json"
    atomic_write_json(path, {"exact_match": 0.5})
    assert path.parent in synced_after(disk_events, path)


def test_checkpoint_swap_syncs_its_files_then_the_rename(
    disk_events: list[tuple[str, Path]], tmp_path: Path
) -> None:
    """Replacing `last` (as `copy_checkpoint` does after a new best): the new folder's files
    are synced before it is renamed into place, the checkpoints folder after."""
    source = tmp_path / "checkpoints" / "best"
    (source / "sub").mkdir(parents=True)
    (source / "model.safetensors").write_bytes(b"weights")
    (source / "sub" / "random_states_0.pkl").write_bytes(b"rng")
    (source / META_NAME).write_text("{}")
    last = tmp_path / "checkpoints" / "last"
    one_process = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    copy_checkpoint(one_process, source, last)
    copy_checkpoint(one_process, source, last)  # a second time: the old `last` is swapped out

    staged = last.with_name(".last.tmp")
    assert {
        staged / "model.safetensors",
        staged / "sub" / "random_states_0.pkl",
        staged / META_NAME,
        staged / "sub",
    } <= synced_before(disk_events, last)
    assert last.parent in synced_after(disk_events, last)
    assert (last / "sub" / "random_states_0.pkl").read_bytes() == b"rng"
