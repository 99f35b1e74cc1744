"""Process trees under test: find a launcher's ranks, kill a run at a chosen moment, check
that nothing outlived a SIGKILL, and run one launch script as several "nodes" on this machine."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from support.launch import LAUNCH
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


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a launcher and everything it started (torchrun puts workers in their own session,
    so killing the launcher's process group would leave them behind)."""
    try:
        tree = process_tree(proc.pid)
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(tree, timeout=10)
    proc.wait()


def run_nodes(
    script: str,
    env: dict[str, str],
    argv: list[str],
    logs: Path,
    nodes: int = 2,
    timeout_s: float = 90,
) -> list[str]:
    """Start launch/`script` once per machine rank (MACHINE_RANK 0 .. nodes - 1), concurrently;
    return each node's output.

    Fails (after killing every node) when a node exits non-zero or the run outlives timeout_s:
    a node left waiting for a dead peer never hangs the suite."""
    outputs = [logs / f"node{rank}.log" for rank in range(nodes)]
    procs: list[subprocess.Popen] = []
    timed_out = False
    try:
        for rank, output in enumerate(outputs):
            with output.open("w") as sink:
                procs.append(
                    subprocess.Popen(
                        ["bash", str(LAUNCH / script), *argv],
                        env={**env, "MACHINE_RANK": str(rank)},
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in procs):
            timed_out = time.monotonic() > deadline
            if timed_out or any(p.returncode not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_tree(proc)
    texts = [output.read_text() for output in outputs]
    report = "\n".join(
        f"--- node {r} (exit {p.returncode}):\n{t[-2000:]}"
        for r, (p, t) in enumerate(zip(procs, texts, strict=True))
    )
    assert not timed_out, f"killed after {timeout_s}s without finishing\n{report}"
    assert [p.returncode for p in procs] == [0] * nodes, f"a node failed, all killed\n{report}"
    return texts
