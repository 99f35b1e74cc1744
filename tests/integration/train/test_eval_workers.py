"""The val loader is built once per training run and keeps its worker processes between
epochs (persistent workers): an evaluation no longer pays the workers' start-up each time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import dataloader

from seqtrain import train as train_module
from seqtrain.config import DataConfig
from seqtrain.data.format import load_manifest
from seqtrain.data.stream import eval_loader
from support.training import run_in_process, train_argv


@pytest.fixture
def worker_starts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per start of a DataLoader's worker processes."""
    starts: list[int] = []
    original = dataloader._MultiProcessingDataLoaderIter.__init__

    def counting(self, loader):
        starts.append(1)
        original(self, loader)

    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "__init__", counting)
    return starts


@pytest.mark.parametrize(("persistent", "starts"), [(True, 1), (False, 2)])
def test_persistent_eval_loader_starts_workers_once(
    tiny_shards: Path, worker_starts, persistent, starts
) -> None:
    manifest = load_manifest(tiny_shards)
    cfg = DataConfig(shards=tiny_shards, eval_batch_size=50, num_workers=2)
    batches = eval_loader(manifest, cfg, "val", 0, 1, persistent=persistent)
    first, second = list(batches), list(batches)
    assert len(first) == len(batches) == 5
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))
    assert len(worker_starts) == starts


def test_training_builds_the_val_loader_once(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []

    def recording(manifest, cfg, split, *args, **kwargs):
        built.append(split)
        return eval_loader(manifest, cfg, split, *args, **kwargs)

    monkeypatch.setattr(train_module, "eval_loader", recording)
    argv = train_argv(tiny_shards, tmp_path, "val", "--epochs", "3", "--num-workers", "1")
    run_in_process([*argv, "--steps-per-epoch", "2", "--wandb-mode", "disabled"])
    assert built == ["val"]
