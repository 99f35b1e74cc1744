"""--members on a GPU (skipped without one): the vectorized stacked members (vmap, the static
skip-blank path) train as the members one after another, and a --members run trains there."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from seqtrain.components.metrics import sequence_loss
from seqtrain.models import build_model
from seqtrain.models.stacked import StackedMembers
from support.training import read_jsonl, run_in_process, train_argv

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
MEMBERS, BATCH = 4, 32


def test_vectorized_members_step_as_one_after_another() -> None:
    models = []
    for seed in range(MEMBERS):
        torch.manual_seed(seed)
        models.append(build_model("slotnet_narrow_skipblank"))
    looped = StackedMembers(copy.deepcopy(models), vectorized=False).cuda()
    vectorized = StackedMembers(models, vectorized=True).cuda()
    images = torch.rand(BATCH * MEMBERS, 1, 28, 84, device="cuda")
    images[::3, :, :, 56:] = 0  # blank third slots
    labels = torch.randint(0, 11, (BATCH * MEMBERS, 3), device="cuda")
    keys = torch.randint(0, 2**62, (BATCH * MEMBERS,), device="cuda")
    for model in (looped, vectorized):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        sequence_loss(model(images, keys), labels).backward()
        optimizer.step()
    for key, value in looped.state_dict().items():
        torch.testing.assert_close(vectorized.state_dict()[key], value, rtol=1e-4, atol=1e-4)


def test_members_run_on_the_gpu(tiny_shards: Path, tmp_path: Path) -> None:
    run_in_process(train_argv(tiny_shards, tmp_path, "gpu", "--model", "slotnet_narrow_skipblank",
                              "--members", "3", "--epochs", "2", "--steps-per-epoch", "3",
                              "--wandb-mode", "disabled"))  # fmt: skip
    epochs = read_jsonl(tmp_path / "gpu/metrics.jsonl")
    assert [len(epoch["members"]) for epoch in epochs] == [3, 3]
    assert (tmp_path / "gpu/export/ensemble.json").is_file()
