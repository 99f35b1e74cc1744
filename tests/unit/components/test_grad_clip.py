"""--clip-grad-norm on two CPU ranks (gloo, DDP): every rank clips by the norm of the global
(all-reduced) gradient, not its own batch's, so the replicas stay identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from seqtrain.components.grad_clip import GradClip
from support.distributed import run_on_ranks

MAX_NORM = 1e-3


def _data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each rank's own batch: rank 1's targets are far off, so the ranks' gradients differ."""
    generator = torch.Generator().manual_seed(rank)
    return torch.randn(8, 4, generator=generator), torch.full((8, 2), 10.0 * rank)


def _model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 2)


def _loss(model: nn.Module, rank: int) -> torch.Tensor:
    x, y = _data(rank)
    return ((model(x) - y) ** 2).mean()


def _rank_clips(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is minus the gradient
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.backward(_loss(model, accelerator.process_index))
    clip = GradClip(MAX_NORM, accelerator.device)
    clip(accelerator, model)
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    optimizer.step()
    norm_sum, steps = clip.take_window()
    record = {
        "train/grad_norm": norm_sum.item() / steps,
        "clipped_norm": clipped.item(),
        "weights": [p.detach().flatten().tolist() for p in model.parameters()],
    }
    (out / f"{accelerator.process_index}.json").write_text(json.dumps(record))


def _gradient(ranks: list[int]) -> list[torch.Tensor]:
    """The gradient DDP trains with: the mean of the ranks' gradients, on one process."""
    model = _model()
    torch.stack([_loss(model, rank) for rank in ranks]).mean().backward()
    return [p.grad for p in model.parameters()]


def _norm(tensors: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.cat([t.flatten() for t in tensors])).item()


@pytest.mark.multiprocess
def test_every_rank_clips_by_the_global_norm(tmp_path: Path) -> None:
    run_on_ranks(_rank_clips, tmp_path)
    ranks = [json.loads((tmp_path / f"{i}.json").read_text()) for i in (0, 1)]
    global_norm = _norm(_gradient([0, 1]))
    # Each rank's own batch would give another norm: clipping by it would split the replicas.
    assert abs(_norm(_gradient([0])) - _norm(_gradient([1]))) > 1.0
    for rank in ranks:
        assert rank["train/grad_norm"] == pytest.approx(global_norm, rel=1e-5)
        assert rank["clipped_norm"] == pytest.approx(MAX_NORM, rel=1e-4)
    assert ranks[0]["weights"] == ranks[1]["weights"]
    init = [p.detach().flatten() for p in _model().parameters()]
    scale = MAX_NORM / global_norm
    expected = [
        (w - scale * g.flatten()).tolist() for w, g in zip(init, _gradient([0, 1]), strict=True)
    ]
    for got, want in zip(ranks[0]["weights"], expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6)
