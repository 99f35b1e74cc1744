"""One owner per run folder: no silent overwrite of a finished run, one trainer at a time on a
live folder, and no lock outliving a killed trainer (real processes, real signals)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from seqtrain.components.run_paths import LOCK as LOCK_NAME
from support.distributed import cpu_env
from support.processes import kill_when
from support.training import cli_argv, epoch_of, error_line, read_jsonl


def run_cli(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, env=cpu_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def folder_bytes(run: Path) -> dict[str, bytes]:
    """Every file of the run folder but the lock (whose holder record each start rewrites)."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


@pytest.fixture(scope="module")
def finished_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    done = run_cli(cli_argv(tiny_shards, out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_new_run_into_a_finished_run_is_refused_and_touches_nothing(
    finished_run: Path, tiny_shards: Path
) -> None:
    before = folder_bytes(finished_run / "job")
    assert any(name.startswith("checkpoints/best/") for name in before)
    done = run_cli(cli_argv(tiny_shards, finished_run))
    assert done.returncode == 2
    line = error_line(done.stderr)
    assert "already holds a run" in line, line
    assert all(hint in line for hint in ("--resume auto", "--run-name", "--overwrite")), line
    assert folder_bytes(finished_run / "job") == before


def test_overwrite_replaces_the_old_run_and_is_not_saved(tiny_shards: Path, tmp_path: Path) -> None:
    argv = cli_argv(tiny_shards, tmp_path, "--epochs", "1")
    assert run_cli(argv).returncode == 0
    old_export = (tmp_path / "job" / "export" / "model.safetensors").read_bytes()
    done = run_cli([*argv, "--overwrite", "--lr", "0.05"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert [e["epoch"] for e in read_jsonl(tmp_path / "job" / "metrics.jsonl")] == [1]
    assert (tmp_path / "job" / "export" / "model.safetensors").read_bytes() != old_export
    # Rerunning the saved config must never overwrite again.
    saved = yaml.safe_load((tmp_path / "job" / "config.yaml").read_text())
    assert saved["train"]["overwrite"] is False


@pytest.mark.faults
@pytest.mark.slow
def test_second_trainer_on_a_live_folder_fails_naming_the_holder(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """The holder is frozen (SIGSTOP) once epoch 1's checkpoint is in place, so it is alive for
    as long as the second start takes; then it goes on and finishes undisturbed."""
    argv = cli_argv(tiny_shards, tmp_path)
    last = tmp_path / "job" / "checkpoints" / "last"
    holder = kill_when(argv, lambda: epoch_of(last) is not None, env=cpu_env(), sig=signal.SIGSTOP)
    try:
        started = time.monotonic()
        second = run_cli([*argv, "--resume", "auto"], timeout=120)
        took = time.monotonic() - started
    finally:
        holder.send_signal(signal.SIGCONT)
    _, err = holder.communicate(timeout=240)
    assert holder.returncode == 0, err[-3000:]
    assert second.returncode == 2
    line = error_line(second.stderr)
    assert "is in use by another trainer" in line, line
    assert f"host {socket.gethostname()}, pid {holder.pid}" in line, line
    assert took < 60, took  # start-up (imports) included; the lock itself is not waited for
    assert [e["epoch"] for e in read_jsonl(tmp_path / "job" / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.faults
@pytest.mark.slow
def test_lock_of_a_killed_trainer_does_not_block_resume(tiny_shards: Path, tmp_path: Path) -> None:
    argv = cli_argv(tiny_shards, tmp_path)
    last = tmp_path / "job" / "checkpoints" / "last"
    killed = kill_when(argv, lambda: epoch_of(last) is not None, env=cpu_env())
    killed.communicate()
    # The killed trainer held the lock: its record is still in the file.
    assert json.loads((tmp_path / "job" / LOCK_NAME).read_text())["pid"] == killed.pid
    done = run_cli([*argv, "--resume", "auto"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    assert [e["epoch"] for e in read_jsonl(tmp_path / "job" / "metrics.jsonl")] == [1, 2, 3]
