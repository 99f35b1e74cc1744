"""launch/: the number of ranks and the GPUs they get follow CUDA_VISIBLE_DEVICES, on a stand-in
8-GPU machine (a fake `nvidia-smi` on PATH that lists every installed GPU, as the real one does
whatever CUDA_VISIBLE_DEVICES says)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.launch import LAUNCH, dry_run, option, run_script

INSTALLED = 8


@pytest.fixture
def eight_gpus(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lines = "".join(
        f"echo 'GPU {i}: NVIDIA H100 (UUID: GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd)'\n"
        for i in range(INSTALLED)
    )
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f'#!/bin/sh\n[ "$1" = -L ] || exit 1\n{lines}')
    smi.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "DRY_RUN": "1"}


def node_command(env: dict[str, str]) -> list[str]:
    (cmd,) = dry_run("train_node.sh", ["--shards", "d"], env)
    return cmd


def test_all_installed_gpus_without_a_visible_set(eight_gpus):
    cmd = node_command(eight_gpus)
    assert option(cmd, "--num_processes") == "8"
    assert option(cmd, "--config_file").endswith("node-8gpu-bf16.yaml")


@pytest.mark.parametrize(
    ("visible", "ranks"),
    [
        ("0,1", 2),
        ("6,7,8,9", 2),  # CUDA stops at the first index past the installed GPUs
        ("0,1,-1,2", 2),  # ... and at -1, the usual "hide the rest"
        ("GPU-00000003-aaaa-bbbb-cccc-dddddddddddd,MIG-5c1a0f9e-1b2c-4d3e-8f9a-0b1c2d3e4f5a", 2),
        ("3,GPU-00000005-aaaa-bbbb-cccc-dddddddddddd,1", 3),
    ],
)
def test_ranks_follow_the_visible_set(eight_gpus, visible, ranks):
    cmd = node_command({**eight_gpus, "CUDA_VISIBLE_DEVICES": visible})
    assert option(cmd, "--num_processes") == str(ranks)


def test_one_visible_gpu_uses_the_single_gpu_config(eight_gpus):
    cmd = node_command({**eight_gpus, "CUDA_VISIBLE_DEVICES": "5"})
    assert option(cmd, "--num_processes") == "1"
    assert option(cmd, "--config_file").endswith("gpu-1.yaml")


@pytest.mark.parametrize("script", ["train_node.sh", "train_multinode.sh", "torchrun_train.sh"])
def test_empty_visible_set_means_no_gpus(eight_gpus, script):
    result = run_script(script, [], {**eight_gpus, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2, result.stdout
    assert "no GPUs visible in CUDA_VISIBLE_DEVICES=''" in result.stderr


def test_multinode_ranks_follow_the_visible_set_over_slurm_count(eight_gpus):
    # Inside a job step SLURM sets CUDA_VISIBLE_DEVICES to the node's allocation.
    env = {**eight_gpus, "SLURM_NNODES": "2", "SLURM_NODEID": "0", "SLURM_GPUS_ON_NODE": "8"}
    env |= {"MAIN_PROCESS_IP": "10.0.0.1", "CUDA_VISIBLE_DEVICES": "0,1,2"}
    (cmd,) = dry_run("train_multinode.sh", [], env)
    assert option(cmd, "--num_processes") == "6"
    (cmd,) = dry_run("torchrun_train.sh", [], env)
    assert option(cmd, "--nproc_per_node") == "3"


@pytest.mark.parametrize("config", sorted((LAUNCH / "accelerate").glob("*.yaml")))
def test_accelerate_configs_keep_the_users_visible_set(config, tmp_path):
    """`accelerate launch` overwrites CUDA_VISIBLE_DEVICES with a config's `gpu_ids` unless it
    is `all`: the rank must see the set the user chose."""
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nprint('visible=' + os.environ.get('CUDA_VISIBLE_DEVICES', '-'))\n")
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(config), "--num_processes", "1",
         "--num_machines", "1", "--machine_rank", "0", str(probe)],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert "visible=\n" in result.stdout, result.stdout + result.stderr
