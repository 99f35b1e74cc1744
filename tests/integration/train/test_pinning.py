"""Pinned host memory only for batches bound for a CUDA device: a `--cpu` rank on a GPU node
(here: `torch.cuda.is_available` faked True) must pin nothing, since pinning opens a CUDA
context in every such rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqtrain.config import DataConfig
from seqtrain.data.format import load_manifest
from seqtrain.data.stream import eval_loader, train_loader
from support.loaders import fresh_plan
from support.training import run_in_process, train_argv


@pytest.fixture
def gpu_node(monkeypatch: pytest.MonkeyPatch) -> list[torch.Size]:
    """CUDA reported present; every `Tensor.pin_memory` call recorded (shape), not performed."""
    pinned: list[torch.Size] = []

    def record(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        pinned.append(tensor.shape)
        return tensor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", record)
    return pinned


@pytest.mark.parametrize(("device", "pins"), [("cpu", False), (None, False), ("cuda", True)])
def test_loaders_pin_only_for_a_cuda_device(tiny_shards: Path, gpu_node, device, pins) -> None:
    manifest = load_manifest(tiny_shards)
    cfg = DataConfig(shards=tiny_shards, batch_size=8, eval_batch_size=50, num_workers=0)
    where = None if device is None else torch.device(device)
    list(train_loader(manifest, cfg, fresh_plan(cfg, 0, 2, 1, seed=0), 0, 1, device=where))
    list(eval_loader(manifest, cfg, "val", 0, 1, device=where))
    assert bool(gpu_node) == pins


def test_cpu_training_on_a_gpu_node_pins_nothing(
    tiny_shards: Path, tmp_path: Path, gpu_node, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With CUDA reported present, torch's optimizers ask the CUDA stream whether it is capturing
    # a graph, which this CUDA-less torch cannot answer: not what is tested here.
    monkeypatch.setattr(
        torch.optim.Optimizer, "_accelerator_graph_capture_health_check", lambda _self: None
    )
    argv = train_argv(tiny_shards, tmp_path, "cpu", "--cpu", "--epochs", "1")
    run_in_process([*argv, "--steps-per-epoch", "3", "--wandb-mode", "disabled"])
    assert (tmp_path / "cpu" / "test_metrics.json").is_file()
    assert gpu_node == []
