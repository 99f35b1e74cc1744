"""Training runs for tests: the tiny-model argv, in-process and subprocess runs, a kill mid-epoch,
and the checks that two runs (one broken and resumed, one not) ended identically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

import seqtrain
from seqtrain.cli import main
from seqtrain.components.checkpoint import META_NAME, find_checkpoint

# A subprocess run's environment: no GPU, one thread (the tests share 2 cores).
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def train_argv(shards: Path, out: Path, name: str, *extra: str) -> list[str]:
    """A fast tiny-model run; `extra` flags override."""
    return [
        "train",
        "--shards", str(shards),
        "--model", "tiny",
        "--batch-size", "16",
        "--eval-batch-size", "100",
        "--num-workers", "0",
        "--lr", "1e-2",
        "--epochs", "8",
        "--log-every", "10",
        "--output-dir", str(out),
        "--run-name", name,
        *extra,
    ]  # fmt: skip


def job_argv(shards: Path, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    """Run "job" (W&B off) of `epochs` epochs of 2 steps, validated in one batch."""
    return train_argv(shards, out, "job", "--wandb-mode", "disabled", "--epochs", str(epochs),
                      "--steps-per-epoch", "2", "--eval-batch-size", "250", *extra)  # fmt: skip


def run_in_process(argv: list[str]) -> None:
    """`seqtrain` `argv` in this process, Accelerate's per-process state reset afterwards."""
    try:
        main(argv)
    finally:
        # Accelerate's state is a per-process singleton; a fresh run needs a fresh one.
        AcceleratorState._reset_state(reset_partial_state=True)


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of an in-process run that must stop with exit 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(argv)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def cli_argv(shards: Path, out: Path, *extra: str) -> list[str]:
    """A tiny 3-epoch run named `job` through the real command line (W&B off)."""
    return [
        sys.executable, "-m", "seqtrain",
        *train_argv(shards, out, "job", "--wandb-mode", "disabled", "--epochs", "3",
                    "--steps-per-epoch", "4", "--eval-batch-size", "250"),
        *extra,
    ]  # fmt: skip


def resume_argv(shards: Path, out: Path) -> list[str]:
    """A 2-epoch, 6-step-per-epoch reference-model run named `job`, a checkpoint every 2 steps."""
    # The reference model has dropout, so equality also proves the RNG state was restored.
    return [
        sys.executable, "-m", "seqtrain",
        *train_argv(shards, out, "job", "--wandb-mode", "disabled"),
        "--model", "reference", "--lr", "1e-3", "--epochs", "2", "--steps-per-epoch", "6",
        "--checkpoint-every", "2", "--eval-batch-size", "250",
    ]  # fmt: skip


def run_to_end(argv: list[str], env: dict[str, str] = ENV) -> str:
    """Run `argv` to a zero exit; its stdout."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def kill_mid_second_epoch(argv: list[str], run: Path) -> None:
    """SIGKILL as soon as a checkpoint from inside epoch 2 exists."""
    meta = run / "checkpoints" / "last" / META_NAME
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


def epoch_of(checkpoint: Path) -> int | None:
    """The epoch a checkpoint folder's record names; None while it is absent or incomplete."""
    try:
        return json.loads((checkpoint / META_NAME).read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return None


def error_line(stderr: str) -> str:
    """The one error line of a failed run's stderr (progress bars aside), no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [ln.split("\r")[-1] for ln in stderr.splitlines() if "error" in ln]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    for name, tensor in left.items():
        assert right[name].equal(tensor), name


def assert_same_result(unbroken: Path, broken: Path) -> None:
    """Both runs' best and last weights and their test metrics are identical."""
    for checkpoint in ("last", "best"):
        assert_same_weights(unbroken / "checkpoints" / checkpoint,
                            broken / "checkpoints" / checkpoint)  # fmt: skip
    want = json.loads((unbroken / "test_metrics.json").read_text())
    assert json.loads((broken / "test_metrics.json").read_text()) == want


def assert_checkpoints_loadable(run: Path) -> None:
    """best and last are each absent (not written yet) or complete: `load_model` reads them."""
    for name in ("best", "last"):
        found = find_checkpoint(run / "checkpoints" / name)
        if found is not None:
            seqtrain.load_model(found)
