"""--stage-on-device through a kill: a run killed inside epoch 2 (its epoch 3 possibly being
staged in the background) and resumed stages its segments anew and ends identical to the
unbroken run."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.training import (
    assert_same_result,
    kill_mid_second_epoch,
    resume_argv,
    run_to_end,
)

STAGED = ["--stage-on-device", "--epochs", "3"]


@pytest.mark.slow
@pytest.mark.faults
def test_a_staged_run_killed_mid_epoch_resumes_exactly(tiny_shards: Path, tmp_path: Path) -> None:
    unbroken = tmp_path / "unbroken"
    run_to_end([*resume_argv(tiny_shards, unbroken), *STAGED])
    broken = tmp_path / "broken"
    argv = [*resume_argv(tiny_shards, broken), *STAGED]
    kill_mid_second_epoch(argv, broken / "job")
    assert "resumed from" in run_to_end([*argv, "--resume", "auto"])
    assert_same_result(unbroken / "job", broken / "job")
