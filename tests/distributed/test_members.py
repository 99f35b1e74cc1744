"""--members on several CPU processes (gloo): N members trained on 2 processes, or in
micro-batches, train as on one process (each rank holds every member's share of the step)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support.distributed import cpu_env, launch_argv
from support.training import read_jsonl, run_to_end, train_argv


def members_argv(shards: Path, out: Path, name: str, processes: int, *extra: str) -> list[str]:
    """One epoch of 4 steps of 2 reference members (keyed dropout) at a global batch of 32."""
    start = launch_argv(processes) if processes > 1 else [sys.executable, "-m", "seqtrain"]
    flags = train_argv(shards, out, name, "--wandb-mode", "disabled")
    return [
        *start, *flags, "--model", "reference", "--lr", "1e-3", "--epochs", "1",
        "--steps-per-epoch", "4", "--global-batch-size", "32", "--eval-batch-size", "250",
        "--mixed-precision", "no", "--members", "2", "--member-seeds", "4", "9", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def one_process(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("members-ddp")
    run_to_end(members_argv(tiny_shards, out, "one", 1), cpu_env())
    return out / "one"


@pytest.mark.parametrize("processes, extra", [(2, ()), (1, ("--micro-batch-size", "8"))])
def test_members_train_alike_on_any_layout(
    processes: int, extra: tuple[str, ...], one_process: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    run_to_end(members_argv(tiny_shards, tmp_path, "run", processes, *extra), cpu_env())
    (got,), (want,) = (
        read_jsonl(tmp_path / "run/metrics.jsonl"),
        read_jsonl(one_process / "metrics.jsonl"),
    )
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4)
    for mine, theirs in zip(got["members"], want["members"], strict=True):
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
    # As tests/distributed/test_global_batch.py: Adam may turn a gradient near 0 either way.
    weights = load_file(tmp_path / "run/checkpoints/last/model.safetensors")
    for name, tensor in load_file(one_process / "checkpoints/last/model.safetensors").items():
        assert torch.dist(weights[name], tensor) <= 1e-2 * tensor.norm(), name
