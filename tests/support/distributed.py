"""Multi-process training runs for tests: a forced early stop, a CPU-only environment, and the
checks that every rank of a run agreed on world size, LR schedule, stop epoch and counts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch.distributed
import torch.multiprocessing

from bench.stores import free_port  # one port picker for servers and launches
from seqtrain.data.format import load_manifest
from support.training import read_jsonl

# An LR far below float32 resolution leaves the weights unchanged, so val loss plateaus exactly:
# the LR drops after epoch 2 (plateau patience 0) and early stopping (patience 1) ends the run
# after epoch 2, before any --epochs above 2.
FORCED_EARLY_STOP = ["--lr", "1e-12", "--plateau-patience", "0", "--early-stop-patience", "1"]
FORCED_LR_HISTORY = [1e-12, 1e-13]
FORCED_STOP_EPOCH = 2
ACCELERATE = Path(sys.executable).with_name("accelerate")


def launch_argv(num_processes: int = 2) -> list[str]:
    """`accelerate launch` of `python -m seqtrain` with CPU ranks on a free port."""
    return [
        str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--main_process_port", str(free_port()),
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "seqtrain",
    ]  # fmt: skip


def run_on_ranks(fn: Callable[..., None], *args: object, processes: int = 2) -> None:
    """`fn(*args)` on every rank of a fresh `processes`-rank CPU group (gloo), in this test.
    The ranks are spawned, not forked (as Accelerate's `debug_launcher` does): a forked rank
    inherits this process's threads (fsspec, tqdm) and its Accelerate state from earlier tests,
    and in the full suite such ranks hung or all called themselves rank 0."""
    group = {
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(processes),
        "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    with mock.patch.dict(os.environ, group):
        # Daemons: a rank left behind by a failed test dies with this process.
        torch.multiprocessing.start_processes(
            _as_rank, args=(fn, args), nprocs=processes, start_method="spawn", daemon=True
        )


def _as_rank(rank: int, fn: Callable[..., None], args: tuple) -> None:
    os.environ["RANK"] = os.environ["LOCAL_RANK"] = str(rank)
    fn(*args)
    if torch.distributed.is_initialized():
        # Rank 0 hosts the group's store: leaving first would abort the others' gloo threads.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def cpu_env(**extra: str) -> dict[str, str]:
    """This environment without GPUs and with one thread per rank (ranks share 2 cores), and
    without the W&B service of this test process (an in-process run started one): a run
    started with it would share it with every other, a killed one's run id staying in use."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **extra}


def assert_ranks_agree(
    run: Path,
    shards: Path,
    world_size: int = 2,
    lr_history: list[float] | None = FORCED_LR_HISTORY,
    stop_epoch: int | None = FORCED_STOP_EPOCH,
) -> dict:
    """Every rank saw `world_size`, took the same LR cuts and early stop (the expected ones
    unless None), and val/test metrics counted each sample of the manifest exactly once.
    Returns rank 0's record."""
    ranks = [json.loads((run / "ranks" / f"{i}.json").read_text()) for i in range(world_size)]
    assert [(r["process_index"], r["num_processes"]) for r in ranks] == [
        (i, world_size) for i in range(world_size)
    ]
    assert all(r["lr_history"] == ranks[0]["lr_history"] for r in ranks), ranks
    assert all(r["epochs"] == ranks[0]["epochs"] for r in ranks), ranks
    assert lr_history is None or ranks[0]["lr_history"] == lr_history, ranks
    assert stop_epoch is None or ranks[0]["epochs"] == stop_epoch, ranks

    manifest = load_manifest(shards)
    epochs = read_jsonl(run / "metrics.jsonl")
    assert [e["num_processes"] for e in epochs] == [world_size] * ranks[0]["epochs"]
    assert all(e["val_count"] == manifest.num_samples("val") for e in epochs)
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["count"] == manifest.num_samples("test")
    return ranks[0]
