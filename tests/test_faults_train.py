"""Fault injection, trainer: SIGKILL while a checkpoint is being written (one process and two),
a rank dying, a full disk; afterwards `--resume auto` ends exactly like an unbroken run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_train_resume import ENV, assert_same_weights, resume_argv, run_to_end

import seqtrain
from seqtrain.checkpoint import META_NAME, find_checkpoint

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def kill_when(
    argv: list[str], ready: Callable[[], bool], env: dict[str, str] = ENV, timeout: float = 200
) -> None:
    """Run `argv` in its own process group; SIGKILL the whole group once `ready()` holds.

    Polls the file system every millisecond: a checkpoint folder appears and is swapped in
    within tens of milliseconds."""
    proc = subprocess.Popen(argv, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not ready() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.001)
        assert proc.poll() is None, "the run ended before the moment to kill it"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def epoch_of(checkpoint: Path) -> int | None:
    try:
        return json.loads((checkpoint / META_NAME).read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return None


def assert_checkpoints_loadable(run: Path) -> None:
    """best and last are each absent (not written yet) or complete: `load_model` reads them."""
    for name in ("best", "last"):
        found = find_checkpoint(run / "checkpoints" / name)
        if found is not None:
            seqtrain.load_model(found)


def assert_same_result(unbroken: Path, broken: Path) -> None:
    for checkpoint in ("last", "best"):
        assert_same_weights(unbroken / "checkpoints" / checkpoint,
                            broken / "checkpoints" / checkpoint)  # fmt: skip
    want = json.loads((unbroken / "test_metrics.json").read_text())
    assert json.loads((broken / "test_metrics.json").read_text()) == want


@pytest.fixture(scope="module")
def unbroken(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of `resume_argv` (both of its epochs improve val loss)."""
    out = tmp_path_factory.mktemp("unbroken")
    run_to_end(resume_argv(tiny_shards, out))
    return out / "job"


# Moments inside checkpoint writes (`.<name>.tmp` exists), given the checkpoints folder: a
# mid-epoch `last` in epoch 2, and the second `best`, after the final epoch, when no epoch is
# left to redo it.
KILL_MOMENTS: dict[str, Callable[[Path], bool]] = {
    "last mid-epoch": lambda c: (c / ".last.tmp").exists() and epoch_of(c / "last") == 1,
    "best after the final epoch": lambda c: (c / ".best.tmp").exists() and (c / "best").exists(),
}


@pytest.mark.parametrize("moment", KILL_MOMENTS)
def test_kill_during_checkpoint_write_then_resume(
    moment: str, unbroken: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    argv = resume_argv(tiny_shards, tmp_path)
    checkpoints = tmp_path / "job" / "checkpoints"
    kill_when(argv, lambda: KILL_MOMENTS[moment](checkpoints))
    assert not (tmp_path / "job" / "test_metrics.json").exists()
    assert_checkpoints_loadable(tmp_path / "job")
    assert "resumed from" in run_to_end([*argv, "--resume", "auto"])
    assert_same_result(unbroken, tmp_path / "job")
