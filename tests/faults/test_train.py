"""Fault injection, trainer: SIGKILL while a checkpoint is being written (one process and two)
or after a timed one, a rank dying, a full disk; afterwards `--resume auto` ends exactly like an
unbroken run."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import seqtrain
from seqtrain.components.checkpoint import META_NAME
from support.distributed import cpu_env, launch_argv
from support.processes import kill_when, process_tree, rank_process, survivors_of_sigkill
from support.training import (
    ENV,
    assert_checkpoints_loadable,
    assert_same_result,
    epoch_of,
    error_line,
    resume_argv,
    run_to_end,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture(scope="module")
def unbroken(unbroken_run) -> Path:
    """An uninterrupted run of `resume_argv` (both of its epochs improve val loss)."""
    return unbroken_run("--num-workers", "0")


# Moments inside checkpoint writes (`.<name>.tmp` exists), given the checkpoints folder: a
# mid-epoch `last` in epoch 2, and the second `best`, after the final epoch, when no epoch is
# left to redo it.
KILL_MOMENTS: dict[str, Callable[[Path], bool]] = {
    "last mid-epoch": lambda c: (c / ".last.tmp").exists() and epoch_of(c / "last") == 1,
    "best after the final epoch": lambda c: (c / ".best.tmp").exists() and (c / "best").exists(),
}


@pytest.mark.parametrize("moment", KILL_MOMENTS)
def test_kill_during_checkpoint_write_then_resume(
    moment: str, unbroken: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    argv = resume_argv(tiny_shards, tmp_path)
    checkpoints = tmp_path / "job" / "checkpoints"
    kill_when(argv, lambda: KILL_MOMENTS[moment](checkpoints)).communicate()
    assert not (tmp_path / "job" / "test_metrics.json").exists()
    assert_checkpoints_loadable(tmp_path / "job")
    assert "resumed from" in run_to_end([*argv, "--resume", "auto"])
    assert_same_result(unbroken, tmp_path / "job")


def test_full_disk_during_checkpoint_is_one_line_and_keeps_last(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """Once the first checkpoint is in place, cap the running trainer's file size (a real
    write failure, EFBIG, as a full disk gives ENOSPC): the next checkpoint cannot be written."""
    argv = resume_argv(tiny_shards, tmp_path)
    last = tmp_path / "job" / "checkpoints" / "last"
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline = time.monotonic() + 200
    while epoch_of(last) is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    good = json.loads((last / META_NAME).read_text())
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
    _, err = proc.communicate(timeout=200)
    assert proc.returncode == 2, err[-3000:]
    line = error_line(err)
    assert line.startswith("seqtrain: error: cannot write checkpoint") and "File too large" in line
    assert json.loads((last / META_NAME).read_text()) == good
    seqtrain.load_model(last)
    assert not list(last.parent.glob(".*.tmp")), "the partial checkpoint is left behind"


def position_of(checkpoint: Path) -> dict:
    """The checkpoint's position (`{}` while there is none): epoch, steps done in it, ..."""
    try:
        return json.loads((checkpoint / META_NAME).read_text())
    except (OSError, ValueError):
        return {}


def timed_argv(shards: Path, out: Path) -> list[str]:
    """`resume_argv`'s run with the default loader workers, saving `last` mid-epoch only by
    the clock: --checkpoint-minutes 0.02 (1.2 s), checked at every step, no --checkpoint-every."""
    argv = resume_argv(shards, out)
    at = argv.index("--num-workers")
    del argv[at : at + 2]
    timed = ["--checkpoint-minutes", "0.02", "--preempt-check-every", "1", "--checkpoint-every"]
    return [*argv, *timed, "0", "--steps-per-epoch", "30"]


def test_kill_after_the_first_timed_checkpoint_then_resume(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """SIGKILL (the whole tree: the trainer and its loader workers) as soon as the clock has
    saved `last` inside an epoch; `--resume auto` continues from that step and ends like an
    unbroken run."""
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    run_to_end(timed_argv(tiny_shards, unbroken))
    argv = timed_argv(tiny_shards, broken)
    last = broken / "job" / "checkpoints" / "last"

    def saved_mid_epoch() -> bool:
        return sum(s["steps"] for s in position_of(last).get("segments", [])) > 0

    kill_when(argv, saved_mid_epoch).communicate()
    saved = position_of(last)
    assert not (broken / "job" / "test_metrics.json").exists()
    out = run_to_end([*argv, "--resume", "auto"])
    steps_done = sum(s["steps"] for s in saved["segments"])
    resumed = f"at epoch {saved['epoch'] + 1}, batch {steps_done} ("
    assert "resumed from" in out and resumed in out, out[-3000:]
    assert_same_result(unbroken / "job", broken / "job")


def two_rank_argv(shards: Path, out: Path, dist_timeout: int = 60) -> list[str]:
    """`resume_argv`'s run on two CPU ranks, with a short collective timeout (seconds)."""
    return [*launch_argv(), *resume_argv(shards, out)[3:], "--dist-timeout", str(dist_timeout)]


def run_two_ranks_to_end(argv: list[str]) -> str:
    done = subprocess.run(argv, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def unbroken_two_ranks(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unbroken2")
    run_two_ranks_to_end(two_rank_argv(tiny_shards, out))
    return out / "job"


@pytest.mark.multiprocess
def test_two_ranks_killed_mid_epoch_then_resume(
    unbroken_two_ranks: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """The whole job (launcher and both ranks) killed inside epoch 2, as a lost node would be."""
    argv = two_rank_argv(tiny_shards, tmp_path)
    last = tmp_path / "job" / "checkpoints" / "last"
    kill_when(argv, lambda: epoch_of(last) == 1, env=cpu_env()).communicate()
    assert_checkpoints_loadable(tmp_path / "job")
    assert "resumed from" in run_two_ranks_to_end([*argv, "--resume", "auto"])
    assert_same_result(unbroken_two_ranks, tmp_path / "job")


@pytest.mark.multiprocess
def test_rank_dying_during_checkpoint_ends_the_job_then_resume(
    unbroken_two_ranks: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """SIGKILL rank 1 alone while a checkpoint is being written: rank 0 and the launcher must
    exit with an error within a bounded time, and the run resumes to the unbroken result."""
    argv = two_rank_argv(tiny_shards, tmp_path)
    checkpoints = tmp_path / "job" / "checkpoints"
    proc = kill_when(
        argv,
        lambda: (checkpoints / ".last.tmp").exists() and epoch_of(checkpoints / "last") == 1,
        env=cpu_env(),
        victims=lambda pid: rank_process(pid, 1),
    )
    start = time.monotonic()
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < 120
    assert_checkpoints_loadable(tmp_path / "job")
    assert "resumed from" in run_two_ranks_to_end([*argv, "--resume", "auto"])
    assert_same_result(unbroken_two_ranks, tmp_path / "job")


@pytest.mark.multiprocess
def test_hung_rank_ends_the_job_within_the_timeout(tiny_shards: Path, tmp_path: Path) -> None:
    """SIGSTOP rank 1 once training is under way (epoch 1's first checkpoint is in place): rank 0
    blocks in its next collective, must give up once --dist-timeout passes, and the launcher must
    exit non-zero soon after instead of hanging on the frozen rank. Everything is killed after."""
    timeout = 15
    last = tmp_path / "job" / "checkpoints" / "last"
    proc = kill_when(
        two_rank_argv(tiny_shards, tmp_path, dist_timeout=timeout),
        lambda: epoch_of(last) is not None,
        env=cpu_env(),
        victims=lambda pid: rank_process(pid, 1),
        sig=signal.SIGSTOP,
    )
    start = time.monotonic()
    tree = process_tree(proc.pid)
    try:
        _, err = proc.communicate(timeout=timeout + 75)
        took = time.monotonic() - start
    finally:
        proc.kill()
        proc.communicate()
        assert not survivors_of_sigkill(tree)
    assert proc.returncode != 0
    assert took < timeout + 75, took
    # Rank 0's gloo collective gave up after exactly --dist-timeout, reported as one line
    # (the launcher's own ChildFailedError report follows it; that output is torch's).
    (line,) = [ln for ln in err.splitlines() if ln.startswith("seqtrain: error: ")]
    assert "another process of the job died or stopped responding" in line, err[-3000:]
    assert f"Timed out waiting {timeout * 1000}ms" in line, line
    assert "[rank0]: Traceback" not in err, err[-3000:]
