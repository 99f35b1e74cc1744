"""--members across a SIGKILL mid-epoch: `--resume auto` restores every member (weights,
optimizer, each member's best record and sample order) and ends as the unbroken run."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.training import (
    assert_same_result,
    assert_same_weights,
    kill_mid_second_epoch,
    resume_argv,
    run_to_end,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]
MEMBERS = ("--members", "2", "--num-workers", "0")


def test_members_killed_mid_epoch_resume_as_unbroken(
    unbroken_run, tiny_shards: Path, tmp_path: Path
) -> None:
    unbroken = unbroken_run(*MEMBERS)
    argv = [*resume_argv(tiny_shards, tmp_path), *MEMBERS]
    kill_mid_second_epoch(argv, tmp_path / "job")
    assert "resumed from" in run_to_end([*argv, "--resume", "auto"])
    assert_same_result(unbroken, tmp_path / "job")
    for member in ("member0", "member1"):
        assert_same_weights(unbroken / "export" / member, tmp_path / "job" / "export" / member)
