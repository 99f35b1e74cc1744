"""Multi-process training runs for tests: a forced early stop, a CPU-only environment, and the
checks that every rank of a run agreed on world size, LR schedule, stop epoch and counts."""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_train import read_jsonl

from seqtrain.data.format import load_manifest

# An LR far below float32 resolution leaves the weights unchanged, so val loss plateaus exactly:
# the LR drops after epoch 2 (plateau patience 0) and early stopping (patience 1) ends the run
# after epoch 2, before any --epochs above 2.
FORCED_EARLY_STOP = ["--lr", "1e-12", "--plateau-patience", "0", "--early-stop-patience", "1"]
FORCED_LR_HISTORY = [1e-12, 1e-13]
FORCED_STOP_EPOCH = 2


def cpu_env(**extra: str) -> dict[str, str]:
    """This environment without GPUs and with one thread per rank (ranks share 2 cores)."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **extra}


def assert_ranks_agree(run: Path, shards: Path, world_size: int = 2) -> None:
    """Every rank saw `world_size`, took the forced LR cut and early stop together, and val/test
    metrics counted each sample of the manifest exactly once."""
    ranks = [json.loads((run / "ranks" / f"{i}.json").read_text()) for i in range(world_size)]
    assert [(r["process_index"], r["num_processes"]) for r in ranks] == [
        (i, world_size) for i in range(world_size)
    ]
    assert all(r["lr_history"] == FORCED_LR_HISTORY for r in ranks), ranks
    assert all(r["epochs"] == FORCED_STOP_EPOCH for r in ranks), ranks

    manifest = load_manifest(shards)
    epochs = read_jsonl(run / "metrics.jsonl")
    assert [e["num_processes"] for e in epochs] == [world_size] * FORCED_STOP_EPOCH
    assert all(e["val_count"] == manifest.num_samples("val") for e in epochs)
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["count"] == manifest.num_samples("test")
