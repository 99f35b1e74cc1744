"""Process trees under test: find a launcher's ranks, kill a run at a chosen moment, and check
that nothing outlived a SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

import psutil
import pytest

from support.training import ENV


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (torchrun's ranks run in sessions of their own)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def survivors_of_sigkill(tree: list[psutil.Process]) -> list[psutil.Process]:
    """SIGKILL (and SIGCONT, should any be stopped) each of `tree`; those still running after
    10 s, zombies waiting to be reaped aside."""
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
            p.send_signal(signal.SIGCONT)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=10)
    survivors = []
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                survivors.append(p)
        except psutil.NoSuchProcess:
            pass
    return survivors


def rank_process(pid: int, rank: int) -> list[psutil.Process]:
    """The rank `rank` worker below launcher `pid`."""
    return [p for p in process_tree(pid)[1:] if p.environ().get("RANK") == str(rank)]


def kill_when(
    argv: list[str],
    ready: Callable[[], bool],
    env: dict[str, str] = ENV,
    victims: Callable[[int], list[psutil.Process]] = process_tree,
    sig: signal.Signals = signal.SIGKILL,
) -> subprocess.Popen:
    """Start `argv`; once `ready()` holds, send `sig` (default SIGKILL) to `victims(pid)`
    (default: the whole tree).

    Polls the file system every millisecond: a checkpoint folder appears and is swapped in
    within tens of milliseconds. Returns the started process (still running if only some of
    its tree was killed)."""
    proc = subprocess.Popen(argv, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 200
    while not ready() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.001)
    chosen = victims(proc.pid) if proc.poll() is None else []
    for victim in chosen:
        victim.send_signal(sig)
    if not chosen:
        for p in process_tree(proc.pid) if proc.poll() is None else []:
            p.kill()
        proc.communicate()
        pytest.fail("the run ended before the moment to kill it")
    return proc
