"""--profile-steps A:B: a Chrome trace of those global steps in the run folder and the W&B run's
files; a resumed run profiles only the steps of the window it has left."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from seqtrain.components.profiling import StepProfiler
from support.training import run_in_process, train_argv


def trace_events(trace: Path) -> list[dict]:
    return json.loads(trace.read_text())["traceEvents"]


def test_profile_steps_write_a_trace_of_the_train_steps(tiny_shards: Path, tmp_path: Path) -> None:
    run_in_process([*train_argv(tiny_shards, tmp_path, "run"), "--epochs", "1",
                    "--steps-per-epoch", "4", "--wandb-mode", "offline",
                    "--profile-steps", "2:3"])  # fmt: skip
    trace = tmp_path / "run" / "profile" / "rank0.pt.trace.json"
    names = {event.get("name", "") for event in trace_events(trace)}
    # The steps' forward, backward and optimizer ops, in spans named by their global steps.
    assert {"aten::convolution", "aten::cross_entropy_loss"} <= names
    assert any(name.startswith("autograd::engine::evaluate_function") for name in names)
    assert any(name.startswith("Optimizer.step#") for name in names)
    assert {n for n in names if n.startswith("train step ")} == {"train step 2", "train step 3"}
    saved = list((tmp_path / "run" / "wandb").glob("offline-run-*/files/pytorch_traces/*"))
    assert [p.name for p in saved] == [trace.name]
    assert saved[0].read_bytes() == trace.read_bytes()


def profiled_steps(window: tuple[int, int], resumed_after: int, last_step: int, tmp_path: Path):
    """Run steps resumed_after+1..last_step under a StepProfiler; the traces it wrote."""
    written: list[Path] = []
    trace = tmp_path / "trace.json"
    profiler = StepProfiler(window, trace, torch.device("cpu"), saved=written.append)
    with profiler.running(resumed_after):
        for step in range(resumed_after + 1, last_step + 1):
            torch.ones(4).mul(step)
            profiler.after_step(step)
    return written


def test_a_run_resumed_inside_the_window_profiles_the_steps_left(tmp_path: Path) -> None:
    written = profiled_steps((2, 4), resumed_after=3, last_step=6, tmp_path=tmp_path)
    assert written == [tmp_path / "trace.json"]
    names = {event.get("name", "") for event in trace_events(written[0])}
    assert {n for n in names if n.startswith("train step ")} == {"train step 4"}


def test_a_run_resumed_past_the_window_writes_no_trace(tmp_path: Path) -> None:
    assert profiled_steps((2, 3), resumed_after=3, last_step=6, tmp_path=tmp_path) == []
    assert not (tmp_path / "trace.json").exists()
