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
        "ensemble": "ok",
        "train_throughput": "skipped",
        "stream_vs_staged": "ok",
        "loader": "ok",
        "step_overheads": "ok",
        "reference": "ok",
    }
    for name in steps:
        assert json.loads((out / f"{name}.json").read_text())["step"] == name
    reference = json.loads((out / "reference.json").read_text())
    assert reference["epochs"] == 2 and reference["test_count"] == 100
    assert 0 <= reference["test_exact_match"] <= 1 and reference["training_seconds"] > 0
    staged = json.loads((out / "stream_vs_staged.json").read_text())
    assert "--stage-on-device" in staged["staged"]["flags"]
    ensemble = json.loads((out / "ensemble.json").read_text())
    assert ensemble["epochs"] == 2 and len(ensemble["members"]) == 2
    assert ensemble["ensemble"]["train_pflop"] == sum(m["train_pflop"] for m in ensemble["members"])
    overheads = json.loads((out / "step_overheads.json").read_text())
    assert overheads["loss_window_add_s"] < overheads["naive_loss_sum_s"]


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
