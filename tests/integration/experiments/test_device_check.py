"""`python -m experiments.device_check` in --quick mode on this CPU: every step runs (or says why
not) and writes its JSON, so the check is known to work before a GPU machine is ever lent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO


def seqtrain_wheel(tmp_path: Path) -> Path:
    """A folder holding seqtrain's wheel, built from a copy (the checkout stays clean)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    for package in ("seqtrain", "data_gen"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__py*"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(source)],
        check=True,
        timeout=300,
    )  # fmt: skip
    return wheels


@pytest.mark.slow
def test_quick_device_check_writes_every_figure(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.device_check", "--quick", "--out", str(out),
         "--wheels", str(seqtrain_wheel(tmp_path)), "--install-dry-run",
         "--mnist-dir", str(mnist_dir), "--skip", "train_throughput"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert {k: s["status"] for k, s in steps.items()} == {
        "environment": "ok",
        "install": "ok",
        "gpu_tests": "ok",
        "data": "ok",
        "reference": "ok",
        "members": "ok",
        "profile": "ok",
        "train_throughput": "skipped",
        "stream_vs_staged": "ok",
        "loader": "ok",
        "step_overheads": "ok",
    }
    for name in steps:
        assert json.loads((out / f"{name}.json").read_text())["step"] == name
    reference = json.loads((out / "reference.json").read_text())
    for mode, capture in (("eager", "off"), ("captured", "auto")):
        run = reference[mode]
        assert run["flags"][-2:] == ["--capture", capture]
        assert run["epochs"] == 2 and run["test_count"] == 100
        assert 0 <= run["test_exact_match"] <= 1 and run["training_seconds"] > 0
        assert run["steady_ms_per_step"] > 0  # read back from the run's train_log.csv
    # On this CPU the step runs eagerly and the run says why.
    assert reference["captured"]["training_step"] == [
        "training step: eager (CUDA graphs need a GPU; this run trains on the CPU)"
    ]
    members = json.loads((out / "members.json").read_text())
    assert members["members"] == 2 and members["run"]["epochs"] == 2
    assert len(members["run"]["member_test_exact_match"]) == 2
    assert 0 <= members["test_exact_match_tta1"] <= 1
    profile = json.loads((out / "profile.json").read_text())
    for mode in ("eager", "captured"):
        assert profile[mode]["steps"] == 4 and profile[mode]["wall_ms"] > 0
        assert profile[mode]["gpu_busy_ms"] == 0  # no kernels on a CPU
    staged = json.loads((out / "stream_vs_staged.json").read_text())
    assert "--stage-on-device" in staged["staged"]["flags"]
    overheads = json.loads((out / "step_overheads.json").read_text())
    assert overheads["loss_window_add_s"] > 0 and overheads["naive_loss_sum_s"] > 0


def test_a_failing_step_is_recorded_and_fails_the_check(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.device_check", "--quick", "--out", str(out),
         "--wheels", str(tmp_path), "--mnist-dir", str(tmp_path / "no-mnist"), "--skip",
         "environment", "gpu_tests", "train_throughput", "loader", "step_overheads"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == ["install", "data"]
    assert "holds no seqtrain wheel" in summary["steps"]["install"]["reason"]
    assert summary["steps"]["reference"] == {
        "status": "skipped",
        "seconds": 0.0,
        "reason": "the data step did not succeed",
    }
