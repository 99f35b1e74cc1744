"""No orphans: a rank whose launcher was killed ends by itself within a bound, and the run folder
is free for `--resume auto` (real launchers, real SIGKILL)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from seqtrain.components.parent_watch import POLL_SECONDS
from support.distributed import cpu_env, launch_argv
from support.processes import process_tree, survivors_of_sigkill
from support.training import cli_argv, epoch_of, read_jsonl

BOUND_SECONDS = 30  # generous: the watch polls every POLL_SECONDS; the machine is shared

# A stand-in launcher: starts a watched child in a session of its own (as torch's elastic
# agent starts ranks), prints the child's pid, and waits.
LAUNCHER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""
WATCHED = """
import time
from seqtrain.components.parent_watch import end_with_parent
end_with_parent("the launcher died")
print("watching", flush=True)
time.sleep(600)
"""


def ended_within(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """Those of `processes` still running (zombies aside) after waiting up to `seconds`."""
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.faults
def test_watched_process_ends_when_its_launcher_is_killed(tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, WATCHED], stdout=subprocess.PIPE, text=True
    )
    child = psutil.Process(int(launcher.stdout.readline()))
    try:
        assert launcher.stdout.readline() == "watching\n"  # the child shares the pipe
        launcher.kill()
        launcher.wait()
        assert not ended_within([child], 10 * POLL_SECONDS)
    finally:
        launcher.kill()
        assert not survivors_of_sigkill([child])


@pytest.mark.faults
@pytest.mark.multiprocess
@pytest.mark.slow
def test_ranks_of_a_killed_launcher_end_and_resume_runs(tiny_shards: Path, tmp_path: Path) -> None:
    """SIGKILL `accelerate launch` alone once epoch 1 is saved in a 1000-epoch 2-rank run with
    the default loader workers: both ranks and all their workers end within the bound, long
    before the run could have (a worker blocked writing to its rank's pipe once stayed for
    minutes), and a `--resume auto` on two
    ranks (cut to one more epoch) then runs to the end (no lock error), both ranks resuming
    from and testing the one checkpoint the main process chose."""
    long_run = ("--epochs", "1000", "--early-stop-patience", "1000")  # minutes, not seconds
    long_run = (*long_run, "--num-workers", "2")
    argv = [*launch_argv(), *cli_argv(tiny_shards, tmp_path, *long_run)[3:]]
    last = tmp_path / "job" / "checkpoints" / "last"
    launcher = subprocess.Popen(argv, env=cpu_env(), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    ranks: list[psutil.Process] = []
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while epoch_of(last) is None and launcher.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.01)
        assert launcher.poll() is None, "the run ended before the launcher could be killed"
        ranks = [p for p in process_tree(launcher.pid)[1:]
                 if "RANK" in p.environ() and "RANK" not in p.parent().environ()]  # fmt: skip
        assert len(ranks) == 2
        workers = [w for rank in ranks for w in rank.children(recursive=True)]
        assert workers, "no loader worker running"
        launcher.kill()
        launcher.communicate()
        started = time.monotonic()
        assert not ended_within(ranks, BOUND_SECONDS), "a rank outlived its launcher"
        assert not ended_within(workers, BOUND_SECONDS), "a loader worker outlived its rank"
        assert time.monotonic() - started < BOUND_SECONDS
    finally:
        launcher.kill()
        leftovers = survivors_of_sigkill([*ranks, *workers])
    assert not leftovers
    assert not (tmp_path / "job" / "test_metrics.json").exists(), "the ranks finished instead"

    # The ranks may have finished more epochs before they noticed: resume for one more.
    epochs = epoch_of(last) + 1
    resume = [*argv, "--resume", "auto", "--epochs", str(epochs), "--accept-changes"]
    done = subprocess.run(resume, env=cpu_env(), capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    metrics = read_jsonl(tmp_path / "job" / "metrics.jsonl")
    assert [e["epoch"] for e in metrics] == list(range(1, epochs + 1))
    records = [json.loads((tmp_path / "job" / "ranks" / f"{i}.json").read_text()) for i in (0, 1)]
    assert records[0]["resumed_from"] == str(last)
    assert [(r["resumed_from"], r["tested"]) for r in records] == [
        (str(last), str(last.with_name("best")))
    ] * 2
