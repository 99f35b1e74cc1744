"""Reading a W&B offline run back from its record log."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest

from seqtrain.components.preemption import EXIT_PREEMPTED
from seqtrain.components.run_paths import WANDB_RUN as RUN_STATE_NAME
from seqtrain.components.tracking import (
    _BLOCK,
    LoggedSteps,
    UnreadableLogError,
    read_offline_run,
    read_offline_segments,
)
from support.distributed import cpu_env
from support.processes import kill_when
from support.training import read_jsonl, run_in_process, train_argv


def test_offline_run_reads_back_config_history_summary_media(tmp_path: Path) -> None:
    import wandb

    run = wandb.init(
        project="p", mode="offline", dir=str(tmp_path), config={"optim": {"lr": 0.5}, "n": 3}
    )
    # Long text values make records span several 32 KiB blocks of the log.
    for step in range(3):
        run.log({"val/loss": 1.0 / (step + 1), "note": "x" * (_BLOCK // 2)}, step=step)
    run.log({"picture": wandb.Image(np.zeros((8, 8, 3), np.uint8))}, step=3)
    run.summary["test/exact_match"] = 0.75
    run.finish()

    back = read_offline_run(tmp_path)
    assert back["finished"]
    assert back["config"] == {"optim": {"lr": 0.5}, "n": 3}
    assert [row["val/loss"] for row in back["history"] if "val/loss" in row] == pytest.approx(
        [1.0, 0.5, 1 / 3]
    )
    assert back["summary"]["test/exact_match"] == 0.75
    assert len(back["media"]) == 1 and back["media"][0].suffix == ".png"


def test_reader_waits_for_a_log_still_being_written(tmp_path: Path) -> None:
    """W&B's service may still write the log after `run.finish()` returns (CI once read 2 of 3
    history rows): an unfinished log is read again until its exit record is there."""
    import wandb

    run = wandb.init(project="p", mode="offline", dir=str(tmp_path / "done"))
    for step in range(3):
        run.log({"val/loss": float(step)}, step=step)
    run.finish()
    read_offline_run(tmp_path / "done")  # the whole log, once W&B has written it
    log = next((tmp_path / "done").glob("**/run-*.wandb"))
    whole = log.read_bytes()
    later = tmp_path / "later" / log.name
    later.parent.mkdir()
    later.write_bytes(whole[: len(whole) // 2])  # what a reader may find mid-write

    cut = read_offline_run(later.parent, wait_s=0)
    assert not cut["finished"] and len(cut["history"]) < 3
    threading.Timer(0.5, lambda: later.write_bytes(whole)).start()
    back = read_offline_run(later.parent, wait_s=30)
    assert back["finished"] and [row["val/loss"] for row in back["history"]] == [0, 1, 2]


def test_missing_run_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_offline_run(tmp_path)


def record_chunk(payload: bytes) -> bytes:
    """One whole record as the log stores it: crc32 (of type and payload), length, type 1."""
    return struct.pack("<IHB", zlib.crc32(payload, zlib.crc32(b"\x01")), len(payload), 1) + payload


# A log's first 7 bytes are its file header (":W&B", magic, version).
DAMAGE = {
    "empty": lambda log: b"",
    "cut inside its header": lambda log: log[:3],
    "another file's bytes": lambda log: b"PK\x03\x04" + bytes(64),
    "a record that is not protobuf": lambda log: log[:7] + record_chunk(b"\xff" * 20),
}


@pytest.fixture(scope="module")
def offline_segment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder's `wandb` folder holding one finished offline segment (steps 0..2)."""
    import wandb

    wandb_dir = tmp_path_factory.mktemp("segment") / "wandb"
    run = wandb.init(project="p", mode="offline", dir=str(wandb_dir.parent), id="abcd1234")
    for step in range(3):
        run.log({"val/loss": float(step)}, step=step)
    run.finish()
    read_offline_run(wandb_dir)  # once W&B's service has written all of it
    return wandb_dir


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_segment_is_left_out_of_the_logged_steps_with_one_warning(
    damage: str, offline_segment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resume reads what earlier segments logged; a later segment's log that cannot be
    decoded counts as one that logged nothing (its epochs come again from metrics.jsonl)."""
    shutil.copytree(offline_segment, tmp_path / "wandb")
    (good,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    bad = tmp_path / "wandb" / "offline-run-29991231_000000-abcd1234" / good.name
    bad.parent.mkdir()
    bad.write_bytes(DAMAGE[damage](good.read_bytes()))
    with pytest.raises(UnreadableLogError, match=str(bad)):
        read_offline_segments(tmp_path / "wandb")

    # As a resume finds it: the run folder names its W&B run, whose segments are read.
    (tmp_path / RUN_STATE_NAME).write_text(json.dumps({"id": "abcd1234", "last_steps": {}}))
    assert LoggedSteps(tmp_path, offline=True).last_steps == {"val/loss": 2}
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"seqtrain: warning: left out unreadable W&B offline records {bad}")
    assert warning.endswith("the epochs they held are logged again from metrics.jsonl")


def test_resume_with_a_truncated_offline_log_relogs_the_epochs_from_metrics(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--resume auto` of a run whose only W&B offline log was cut (a disk full, a copy
    interrupted) still runs, and the resumed segment holds the epochs again."""
    argv = train_argv(tiny_shards, tmp_path, "job", "--wandb-mode", "offline", "--epochs", "2")
    run_in_process(argv)
    (log,) = (tmp_path / "job" / "wandb").glob("offline-run-*/run-*.wandb")
    log.write_bytes(log.read_bytes()[:5])
    capsys.readouterr()

    run_in_process([*argv, "--resume", "auto"])
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and str(log) in warnings[0], warnings
    first, resumed = sorted((tmp_path / "job" / "wandb").glob("offline-run-*"))
    assert log.parent == first
    back = read_offline_run(resumed)
    assert back["id"] == json.loads((tmp_path / "job" / RUN_STATE_NAME).read_text())["id"]
    epochs = read_jsonl(tmp_path / "job" / "metrics.jsonl")
    assert [(row["epoch"], row["_step"]) for row in back["history"] if "epoch" in row] == [
        (e["epoch"], e["step"]) for e in epochs
    ]


def steps_logged(run: Path) -> dict[str, int]:
    try:
        return json.loads((run / RUN_STATE_NAME).read_text())["last_steps"]
    except (OSError, ValueError, KeyError):
        return {}


STEPS = 30  # per epoch of the offline runs below


def offline_argv(shards: Path, out: Path, *extra: str) -> list[str]:
    """A 3-epoch offline W&B run `out/job` logging every step."""
    return [
        sys.executable, "-m", "seqtrain",
        *train_argv(shards, out, "job", "--wandb-mode", "offline", "--epochs", "3",
                    "--steps-per-epoch", str(STEPS), "--log-every", "1",
                    "--eval-batch-size", "250", *extra),
    ]  # fmt: skip


def signal_in_epoch_2(argv: list[str], run: Path, sig: signal.Signals):
    """Start `argv` and send `sig` to the trainer alone (W&B's own service process may flush)
    once it has logged 3 steps of epoch 2."""
    return kill_when(
        argv,
        lambda: steps_logged(run).get("train/loss", 0) >= STEPS + 3,
        env=cpu_env(),
        victims=lambda pid: [psutil.Process(pid)],
        sig=sig,
    )


@pytest.mark.faults
@pytest.mark.slow
def test_killed_and_resumed_run_is_one_wandb_run_with_each_epoch_once(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """SIGKILL a few steps into epoch 2: the resume restarts from epoch 1's end, older than the
    last logged step, and replays steps already logged. Both segments are one W&B run whose
    history (read from W&B's own offline records) has each epoch once and no step twice: what
    the killed process's W&B service never wrote is logged again by the resumed one."""
    steps = STEPS
    argv = offline_argv(tiny_shards, tmp_path)
    run = tmp_path / "job"
    killed = signal_in_epoch_2(argv, run, signal.SIGKILL)
    killed.communicate()
    logged = steps_logged(run)
    assert logged["val/loss"] == steps < logged["train/loss"] < 2 * steps, logged
    done = subprocess.run([*argv, "--resume", "auto", "--wandb-log-model"], env=cpu_env(),
                          capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    segments = read_offline_segments(run / "wandb")
    run_id = json.loads((run / RUN_STATE_NAME).read_text())["id"]
    # The killed segment's W&B service may not have written its records (not even the run's).
    assert len(segments) == 2 and {s["id"] for s in segments} <= {run_id, ""}
    assert segments[-1]["id"] == run_id
    rows = [row for segment in segments for row in segment["history"]]
    assert [row["epoch"] for row in rows if "epoch" in row] == [1, 2, 3]
    train_steps = [row["_step"] for row in rows if "train/loss" in row]
    assert train_steps == sorted(set(train_steps)), "a step logged twice or going back"
    assert train_steps[-1] == 3 * steps
    assert (f"model-{run_id}", "model") in segments[-1]["artifacts"]


@pytest.mark.faults
@pytest.mark.slow
def test_preempted_and_resumed_run_is_one_wandb_run_with_each_step_once(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """SIGTERM a few steps into epoch 2 (a preemption): the run saves at that step, exits 75
    with its W&B records written, and the resume continues the same W&B run from the next step:
    every epoch and every train step is in the history exactly once, none lost."""
    steps = STEPS
    argv = offline_argv(tiny_shards, tmp_path, "--preempt-check-every", "1")
    run = tmp_path / "job"
    preempted = signal_in_epoch_2(argv, run, signal.SIGTERM)
    _, err = preempted.communicate(timeout=120)
    assert preempted.returncode == EXIT_PREEMPTED, err[-3000:]
    done = subprocess.run([*argv, "--resume", "auto"], env=cpu_env(),
                          capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    segments = read_offline_segments(run / "wandb")
    run_id = json.loads((run / RUN_STATE_NAME).read_text())["id"]
    assert [s["id"] for s in segments] == [run_id, run_id]
    rows = [row for segment in segments for row in segment["history"]]
    assert [row["epoch"] for row in rows if "epoch" in row] == [1, 2, 3]
    train_steps = [row["_step"] for row in rows if "train/loss" in row]
    assert train_steps == list(range(1, 3 * steps + 1))


def test_wandb_asked_for_but_not_installed_is_a_one_line_error(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # Accelerate drops a tracker whose package is missing with a warning: the run would train
    # and log nowhere. It must stop before any work instead.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "wandb" else real_find_spec(name, *a),
    )
    with pytest.raises(SystemExit) as exit_info:
        run_in_process([*train_argv(tiny_shards, tmp_path, "run"), "--wandb-mode", "offline"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "seqtrain: error: --wandb-mode offline needs the wandb package (pip install wandb); "
        "or pass --wandb-mode disabled"
    )
    assert not (tmp_path / "run").exists()
