"""Resume after a real SIGKILL mid-epoch ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.training import (
    assert_same_weights,
    kill_mid_second_epoch,
    read_jsonl,
    resume_argv,
    run_to_end,
)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])  # in-process loading; the default loader workers
def test_resume_after_kill_matches_uninterrupted_run(
    workers: str, tiny_shards: Path, tmp_path: Path, unbroken_run
) -> None:
    """SIGKILL of the trainer alone mid-epoch 2 (its loader workers end by themselves)."""
    unbroken, broken = unbroken_run("--num-workers", workers).parent, tmp_path / "broken"

    argv = [*resume_argv(tiny_shards, broken), "--num-workers", workers]
    kill_mid_second_epoch(argv, broken / "job")
    assert not (broken / "job" / "test_metrics.json").exists()
    stdout = run_to_end([*argv, "--resume", "auto"])
    assert "resumed from" in stdout and "at epoch 2, batch " in stdout
    assert "at epoch 2, batch 0" not in stdout, "the kill should land mid-epoch"

    for checkpoint in ("last", "best"):
        assert_same_weights(unbroken / "job" / "checkpoints" / checkpoint,
                            broken / "job" / "checkpoints" / checkpoint)  # fmt: skip
    want = json.loads((unbroken / "job" / "test_metrics.json").read_text())
    assert json.loads((broken / "job" / "test_metrics.json").read_text()) == want
    losses = [(e["epoch"], e["val_loss"]) for e in read_jsonl(unbroken / "job" / "metrics.jsonl")]
    assert [
        (e["epoch"], e["val_loss"]) for e in read_jsonl(broken / "job" / "metrics.jsonl")
    ] == losses
