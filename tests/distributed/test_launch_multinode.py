"""The multi-node launch scripts for real: two "nodes" on this machine (machine rank 0 and 1,
main process on 127.0.0.1, one CPU process each) rendezvous, train a tiny run together and agree
on every epoch decision."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.stores import free_port
from support.distributed import FORCED_EARLY_STOP, assert_ranks_agree, cpu_env
from support.processes import run_nodes
from support.training import train_argv

BIN = Path(sys.executable).parent
NODES = 2


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
