"""The multi-node launch scripts for real: two "nodes" on this machine (machine rank 0 and 1,
main process on 127.0.0.1, one CPU process each) rendezvous, train a tiny run together and agree
on every epoch decision."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.stores import free_port
from support import REPO
from support.distributed import FORCED_EARLY_STOP, assert_ranks_agree, cpu_env
from support.training import train_argv

BIN = Path(sys.executable).parent
NODES = 2
TIMEOUT_S = 90


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a launcher and everything it started (torchrun puts workers in their own session,
    so killing the launcher's process group would leave them behind)."""
    try:
        root = psutil.Process(proc.pid)
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(tree, timeout=10)
    proc.wait()


def run_nodes(script: str, env: dict[str, str], argv: list[str], logs: Path) -> list[str]:
    """Start `script` once per machine rank, concurrently; return each node's output.

    Fails (after killing every node) when a node exits non-zero or the run outlives TIMEOUT_S:
    a node left waiting for a dead peer never hangs the suite."""
    outputs = [logs / f"node{rank}.log" for rank in range(NODES)]
    procs: list[subprocess.Popen] = []
    timed_out = False
    try:
        for rank, output in enumerate(outputs):
            with output.open("w") as sink:
                procs.append(
                    subprocess.Popen(
                        ["bash", str(REPO / "launch" / script), *argv],
                        env={**env, "MACHINE_RANK": str(rank)},
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + TIMEOUT_S
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
    assert not timed_out, f"killed after {TIMEOUT_S}s without finishing\n{report}"
    assert [p.returncode for p in procs] == [0] * NODES, f"a node failed, all killed\n{report}"
    return texts


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    ("script", "launcher_var", "launcher"),
    [
        ("train_multinode.sh", "ACCELERATE", "accelerate"),
        ("torchrun_train.sh", "TORCHRUN", "torchrun"),
    ],
)
def test_two_nodes_on_loopback_train_together(
    script: str, launcher_var: str, launcher: str, tiny_shards: Path, tmp_path: Path
) -> None:
    env = cpu_env(
        **{launcher_var: str(BIN / launcher)},
        NUM_MACHINES=str(NODES),
        MAIN_PROCESS_IP="127.0.0.1",
        MAIN_PROCESS_PORT=str(free_port()),
        GPUS_PER_NODE="1",
        MIXED_PRECISION="no",
    )
    # Both nodes write into one run folder, as on a cluster's shared filesystem.
    argv = train_argv(tiny_shards, tmp_path, "nodes", "--wandb-mode", "disabled")[1:]
    argv += [*FORCED_EARLY_STOP, "--epochs", "3"]
    main_node, other_node = run_nodes(script, env, argv, tmp_path)

    assert_ranks_agree(tmp_path / "nodes", tiny_shards, world_size=NODES)
    # Only the main process (on machine rank 0) reports epochs and decisions.
    assert "Epoch 2/3" in main_node and "early stopping" in main_node
    assert "Epoch 1/3" not in other_node
