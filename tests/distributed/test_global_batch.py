"""--global-batch-size: the same training on 1, 2 or 4 CPU processes (gloo), on 2 "nodes" x 2
processes on loopback, with or without gradient accumulation, and across a kill and a resume on
another number of processes. The
sample ledger ($SEQTRAIN_SAMPLE_LEDGER) shows which samples every global step trained; the
reference model has dropout, keyed per sample, so equal losses also prove its masks follow the
sample and not the process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.stores import free_port
from seqtrain.components.checkpoint import META_NAME
from seqtrain.data.position import LEDGER_ENV
from support.distributed import ACCELERATE, cpu_env, launch_argv
from support.processes import kill_when, run_nodes
from support.training import read_jsonl, run_to_end, train_argv

GLOBAL_BATCH, STEPS = 64, 6


def job_argv(shards: Path, out: Path, name: str, processes: int, *extra: str) -> list[str]:
    """One epoch of STEPS steps of the reference model at GLOBAL_BATCH, fp32."""
    start = launch_argv(processes) if processes > 1 else [sys.executable, "-m", "seqtrain"]
    flags = train_argv(shards, out, name, "--wandb-mode", "disabled")
    return [
        *start, *flags, "--model", "reference", "--lr", "1e-3", "--epochs", "1",
        "--steps-per-epoch", str(STEPS), "--global-batch-size", str(GLOBAL_BATCH),
        "--eval-batch-size", "250", "--mixed-precision", "no", *extra,
    ]  # fmt: skip


def global_steps(ledger: Path, before: int | None = None) -> dict[tuple[int, int], list[int]]:
    """Each (epoch, batch) of the ledger: the ranks' samples joined in rank order (only the
    batches before `before`, when given: later ones of a killed run were never trained)."""
    steps: dict[tuple[int, int], list[int]] = {}
    for path in sorted(ledger.glob("rank*.jsonl"), key=lambda p: int(p.stem[4:])):
        for line in read_jsonl(path):
            if before is None or line["batch"] < before:
                steps.setdefault((line["epoch"], line["batch"]), []).extend(line["samples"])
    return steps


def trained(tmp_path: Path, shards: Path, name: str, processes: int, *extra: str) -> Path:
    ledger = tmp_path / f"{name}-ledger"
    run_to_end(job_argv(shards, tmp_path, name, processes, *extra),
               cpu_env(**{LEDGER_ENV: str(ledger)}))  # fmt: skip
    return tmp_path / name


@pytest.fixture(scope="module")
def one_process(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unbroken one-process run every layout is compared with."""
    return trained(tmp_path_factory.mktemp("global-batch"), tiny_shards, "one", 1)


def assert_same_training(run: Path, reference: Path) -> None:
    """The same samples per step, losses equal within float32 reduction order, weights close."""
    assert global_steps(run.with_name(f"{run.name}-ledger")) == global_steps(
        reference.with_name(f"{reference.name}-ledger")
    )
    (got,), (want,) = read_jsonl(run / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
    for key in ("train_loss", "val_loss", "val_exact_match"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), key
    # Adam turns gradients near 0 into whole steps of either sign, so a few weights differ by
    # up to an LR step; another sample or mask would move every tensor by ~10 % of its norm.
    weights = load_file(run / "checkpoints" / "last" / "model.safetensors")
    for name, tensor in load_file(reference / "checkpoints" / "last" / "model.safetensors").items():
        assert torch.dist(weights[name], tensor) <= 1e-2 * tensor.norm(), name


@pytest.mark.parametrize(
    "processes, extra",
    [(2, ()), (4, ()), (2, ("--micro-batch-size", "16")), (1, ("--micro-batch-size", "32"))],
)
def test_a_global_batch_trains_the_same_on_any_layout(
    one_process: Path, tiny_shards: Path, tmp_path: Path, processes: int, extra: tuple[str, ...]
) -> None:
    run = trained(tmp_path, tiny_shards, "layout", processes, "--num-workers", "1", *extra)
    assert_same_training(run, one_process)
    config = (run / "config.yaml").read_text()
    assert f"global_batch_size: {GLOBAL_BATCH}" in config
    assert f"batch_size: {GLOBAL_BATCH // processes}" in config


def test_two_nodes_of_two_processes_train_the_same_as_one_process(
    one_process: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    # launch/train_multinode.sh once per machine rank: two `accelerate launch --num_machines 2
    # --machine_rank 0/1 --num_processes 4` meeting on 127.0.0.1, global ranks 0-1 and 2-3.
    env = cpu_env(
        ACCELERATE=str(ACCELERATE),
        NUM_MACHINES="2",
        MAIN_PROCESS_IP="127.0.0.1",
        MAIN_PROCESS_PORT=str(free_port()),
        GPUS_PER_NODE="2",
        MIXED_PRECISION="no",
        **{LEDGER_ENV: str(tmp_path / "nodes-ledger")},
    )
    flags = job_argv(tiny_shards, tmp_path, "nodes", 1, "--num-workers", "1")
    run_nodes("train_multinode.sh", env, flags[flags.index("train") + 1 :], tmp_path, timeout_s=240)
    assert sorted(p.name for p in (tmp_path / "nodes-ledger").iterdir()) == [
        f"rank{r}.jsonl" for r in range(4)
    ]
    assert_same_training(tmp_path / "nodes", one_process)


@pytest.mark.parametrize("old, new", [(2, 1), (1, 4)])
def test_a_resume_on_another_number_of_processes_follows_the_unbroken_order(
    one_process: Path, tiny_shards: Path, tmp_path: Path, old: int, new: int
) -> None:
    ledger = tmp_path / "ledger"
    env = cpu_env(**{LEDGER_ENV: str(ledger)})
    last = tmp_path / "job" / "checkpoints" / "last"

    def mid_epoch() -> bool:
        try:
            meta = json.loads((last / META_NAME).read_text())
        except (FileNotFoundError, ValueError):
            return False
        return meta["epoch"] == 0 and meta["samples_done"] > 0

    argv = job_argv(tiny_shards, tmp_path, "job", old, "--checkpoint-every", "2")
    kill_when(argv, mid_epoch, env=env)
    done = json.loads((last / META_NAME).read_text())["samples_done"] // GLOBAL_BATCH
    before = global_steps(ledger, before=done)
    (ledger / "killed").mkdir()
    for path in ledger.glob("rank*.jsonl"):
        path.rename(ledger / "killed" / path.name)
    out = run_to_end([*job_argv(tiny_shards, tmp_path, "job", new), "--resume", "auto"], env)
    assert "global batch changes" not in out  # the order goes on unchanged
    after = global_steps(ledger)
    assert min(batch for _, batch in after) == done
    unbroken = global_steps(one_process.with_name("one-ledger"))
    assert {**before, **after} == unbroken
    assert len(before) == done and len(after) == STEPS - done
