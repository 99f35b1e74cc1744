"""Resume after a real SIGKILL mid-epoch ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_train import read_jsonl, train_argv

ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def resume_argv(shards: Path, out: Path) -> list[str]:
    # The reference model has dropout, so equality also proves the RNG state was restored.
    return [
        sys.executable, "-m", "seqtrain",
        *train_argv(shards, out, "job", "--wandb-mode", "disabled"),
        "--model", "reference", "--lr", "1e-3", "--epochs", "2", "--steps-per-epoch", "6",
        "--checkpoint-every", "2", "--eval-batch-size", "250",
    ]  # fmt: skip


def run_to_end(argv: list[str], env: dict[str, str] = ENV) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def kill_mid_second_epoch(argv: list[str], run: Path) -> None:
    """SIGKILL as soon as a checkpoint from inside epoch 2 exists."""
    meta = run / "checkpoints" / "last" / "seqtrain_checkpoint.json"
    process = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and process.poll() is None:
            try:
                position = json.loads(meta.read_text())
            except (FileNotFoundError, ValueError):
                position = {}
            if position.get("epoch") == 1 and position.get("samples_done", 0) > 0:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    for name, tensor in left.items():
        assert right[name].equal(tensor), name


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])  # in-process loading; the default loader workers
def test_resume_after_kill_matches_uninterrupted_run(
    workers: str, tiny_shards: Path, tmp_path: Path
) -> None:
    """SIGKILL of the trainer alone mid-epoch 2 (its loader workers end by themselves)."""
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    run_to_end([*resume_argv(tiny_shards, unbroken), "--num-workers", workers])

    argv = [*resume_argv(tiny_shards, broken), "--num-workers", workers]
    kill_mid_second_epoch(argv, broken / "job")
    assert not (broken / "job" / "test_metrics.json").exists()
    stdout = run_to_end([*argv, "--resume", "auto"])
    assert "resumed from" in stdout and "at epoch 2, batch " in stdout
    assert "at epoch 2, batch 0" not in stdout, "the kill should land mid-epoch"

    for checkpoint in ("last", "best"):
        assert_same_weights(unbroken / "job" / "checkpoints" / checkpoint,
                            broken / "job" / "checkpoints" / checkpoint)  # fmt: skip
    want = json.loads((unbroken / "job" / "test_metrics.json").read_text())
    assert json.loads((broken / "job" / "test_metrics.json").read_text()) == want
    losses = [(e["epoch"], e["val_loss"]) for e in read_jsonl(unbroken / "job" / "metrics.jsonl")]
    assert [
        (e["epoch"], e["val_loss"]) for e in read_jsonl(broken / "job" / "metrics.jsonl")
    ] == losses
