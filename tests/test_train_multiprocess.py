"""Two CPU processes under `accelerate launch`: one gloo group, identical decisions on all ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import read_jsonl, train_argv

from seqtrain.data.format import load_manifest

ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_ranks_share_lr_schedule_early_stop_and_exact_counts(
    tiny_shards: Path, tmp_path: Path
) -> None:
    # An LR far below float32 resolution leaves the weights unchanged, so val loss plateaus
    # exactly: the LR drops after epoch 2 (plateau patience 0), early stopping (patience 1) ends
    # the run after epoch 2, well before --epochs.
    argv = train_argv(tiny_shards, tmp_path, "ddp", "--wandb-mode", "disabled")
    argv += ["--lr", "1e-12", "--plateau-patience", "0", "--early-stop-patience", "1"]
    launch = [
        str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "seqtrain",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launch, *argv], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "ddp"
    ranks = [json.loads((run / "ranks" / f"{i}.json").read_text()) for i in (0, 1)]
    assert [(r["process_index"], r["num_processes"]) for r in ranks] == [(0, 2), (1, 2)]
    assert ranks[0]["lr_history"] == ranks[1]["lr_history"] == [1e-12, 1e-13]
    assert ranks[0]["epochs"] == ranks[1]["epochs"] == 2
    assert "early stopping" in done.stdout

    manifest = load_manifest(tiny_shards)
    epochs = read_jsonl(run / "metrics.jsonl")
    assert [e["num_processes"] for e in epochs] == [2, 2]
    assert all(e["val_count"] == manifest.num_samples("val") for e in epochs)
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["count"] == manifest.num_samples("test")
