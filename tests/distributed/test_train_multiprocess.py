"""Two CPU processes under `accelerate launch`: one gloo group, identical decisions on all ranks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.distributed import FORCED_EARLY_STOP, assert_ranks_agree, cpu_env, launch_argv
from support.training import train_argv


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_ranks_share_lr_schedule_early_stop_and_exact_counts(
    tiny_shards: Path, tmp_path: Path
) -> None:
    argv = train_argv(tiny_shards, tmp_path, "ddp", "--wandb-mode", "disabled", *FORCED_EARLY_STOP)
    done = subprocess.run(
        [*launch_argv(), *argv],
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_ranks_agree(tmp_path / "ddp", tiny_shards)
    assert "early stopping" in done.stdout


@pytest.mark.faults
@pytest.mark.multiprocess
@pytest.mark.slow
def test_long_run_ranks_never_diverge(tiny_shards: Path, tmp_path: Path) -> None:
    """12 short epochs with a jumpy LR: plateau cuts and an early stop, taken by both ranks
    from the same global val loss, on the same epochs."""
    argv = train_argv(tiny_shards, tmp_path, "long", "--wandb-mode", "disabled", "--epochs", "12",
                      "--steps-per-epoch", "3", "--lr", "0.3", "--plateau-patience", "0",
                      "--early-stop-patience", "3")  # fmt: skip
    done = subprocess.run([*launch_argv(), *argv], env=cpu_env(), capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = assert_ranks_agree(tmp_path / "long", tiny_shards, lr_history=None, stop_epoch=None)
    history = rank0["lr_history"]
    assert len(set(history)) >= 2, "no LR cut happened"
    assert rank0["epochs"] < 12 and "early stopping" in done.stdout, history


@pytest.mark.multiprocess
def test_ranks_draw_different_dropout_streams(tiny_shards: Path, tmp_path: Path) -> None:
    """Each rank's torch/NumPy/Python RNG state, as saved in the checkpoint for exact resume,
    differs between the two ranks: anything random they draw does (dropout excepted: it is keyed
    per sample, see tests/distributed/test_global_batch.py)."""
    import torch

    argv = train_argv(tiny_shards, tmp_path, "rng", "--wandb-mode", "disabled", "--epochs", "1",
                      "--steps-per-epoch", "2")  # fmt: skip
    done = subprocess.run([*launch_argv(), *argv], env=cpu_env(), capture_output=True, text=True,
                          timeout=240, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    last = tmp_path / "rng" / "checkpoints" / "last"
    rank0, rank1 = (torch.load(last / f"random_states_{i}.pkl", weights_only=False) for i in (0, 1))
    assert not rank0["torch_manual_seed"].equal(rank1["torch_manual_seed"])
    assert rank0["random_state"] != rank1["random_state"]
    assert (rank0["numpy_random_seed"][1] != rank1["numpy_random_seed"][1]).any()
