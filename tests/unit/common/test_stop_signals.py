"""Stop signals (seqtrain/common/stop_signals.py): recorded from a process's first moment,
never acted on by loader workers, and no worker outlives its rank. Real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from seqtrain.common.stop_signals import (
    STOP_FLAG,
    WORKER_POLL_SECONDS,
    _serve_rank,
    record_from_start,
    stop_signals,
)

# A rank with one shielded loader worker: prints the worker's pid, then obeys commands on stdin:
# "next" (a batch from the worker), "close" (shut the loader down, as torch does), "die"
# (SIGKILL itself, as an out-of-memory kill or a node failure ends a rank).
RANK = """
import os, sys
from torch.utils.data import DataLoader, IterableDataset
from seqtrain.common.stop_signals import shield_worker, shielded_worker_start

class Counter(IterableDataset):
    def __iter__(self):
        yield from range(10**9)

loader = DataLoader(Counter(), batch_size=None, num_workers=1, worker_init_fn=shield_worker)
with shielded_worker_start():
    batches = iter(loader)
print(next(batches), batches._workers[0].pid, flush=True)
for command in sys.stdin:
    if command == "next\\n":
        print(next(batches), flush=True)
    elif command == "close\\n":
        batches._shutdown_workers()
        print("closed", flush=True)
    elif command == "die\\n":
        os.kill(os.getpid(), 9)
"""


@pytest.fixture
def rank() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", RANK], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    yield proc
    proc.kill()
    proc.wait()


def start(rank: subprocess.Popen) -> psutil.Process:
    first, pid = rank.stdout.readline().split()
    assert first == "0"
    return psutil.Process(int(pid))


def ask(rank: subprocess.Popen, command: str) -> str:
    rank.stdin.write(command + "\n")
    rank.stdin.flush()
    return rank.stdout.readline().strip()


def gone_within(process: psutil.Process, seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
    except psutil.TimeoutExpired:
        return process.status() == psutil.STATUS_ZOMBIE
    return True


def test_worker_ignores_stop_signals_meant_for_its_rank(rank: subprocess.Popen) -> None:
    worker = start(rank)
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP):
        worker.send_signal(sig)  # from another process, as SLURM, a shell or torch's agent
    time.sleep(4 * WORKER_POLL_SECONDS)
    assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
    assert ask(rank, "next") == "1"  # and still serving its rank


def test_worker_ends_when_its_rank_shuts_the_loader_down(rank: subprocess.Popen) -> None:
    worker = start(rank)
    assert ask(rank, "close") == "closed"
    assert gone_within(worker, 10)


def test_worker_ends_when_its_rank_is_killed(rank: subprocess.Popen) -> None:
    worker = start(rank)
    rank.stdin.write("die\n")
    rank.stdin.flush()
    rank.wait(timeout=10)
    assert gone_within(worker, 10 * WORKER_POLL_SECONDS)


def test_rank_watch_exits_when_the_rank_is_not_the_parent() -> None:
    exits: list[int] = []
    _serve_rank(rank=os.getppid() + 1, exit_now=exits.append)  # returns at its first look
    assert exits == [0]


@pytest.fixture
def flag_restored():
    yield
    STOP_FLAG.restore()


def test_signal_before_the_flags_are_parsed_is_recorded(flag_restored) -> None:
    before = signal.getsignal(signal.SIGUSR2)
    record_from_start()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert STOP_FLAG.received == "SIGUSR1"
    STOP_FLAG.keep_only(stop_signals("USR1"))  # the configured signal: still recorded
    assert STOP_FLAG.received == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR2) == before  # the others given back
    STOP_FLAG.restore()
    assert STOP_FLAG.received is None


def test_unconfigured_signal_that_arrived_early_acts_as_without_the_flag(flag_restored) -> None:
    hits: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: hits.append(signum))
    try:
        record_from_start()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert hits == [] and STOP_FLAG.received == "SIGUSR2"
        STOP_FLAG.keep_only(stop_signals("none"))
        assert hits == [signal.SIGUSR2] and STOP_FLAG.received is None
    finally:
        signal.signal(signal.SIGUSR2, previous)
