"""StackedMembers: N models stacked into one module train as the N models do on their own."""

from __future__ import annotations

import copy

import pytest
import torch

from seqtrain.components.grad_clip import clip_members
from seqtrain.components.metrics import sequence_loss
from seqtrain.models import build_model
from seqtrain.models.stacked import EnsembleOutput, MemberEnsemble, StackedMembers

MEMBERS, BATCH = 3, 4
MAX_NORM = 0.5  # below the narrow net's gradient norms at these steps: every member clips


def _models(name: str) -> list[torch.nn.Module]:
    models = []
    for seed in range(MEMBERS):
        torch.manual_seed(seed)
        models.append(build_model(name).double())
    return models


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each member's own batch [N, B, ...]: digits, blank slots (no ink) and dropout keys."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(MEMBERS, BATCH, 1, 28, 84, generator=generator, dtype=torch.float64)
    blank = torch.rand(MEMBERS, BATCH, 1, 1, 3, generator=generator) < 0.3
    images = images * ~blank.repeat_interleave(28, -1)
    labels = torch.randint(0, 11, (MEMBERS, BATCH, 3), generator=generator)
    keys = torch.randint(0, 2**62, (MEMBERS, BATCH), generator=generator)
    return images, labels, keys


def _interleaved(tensor: torch.Tensor) -> torch.Tensor:
    """[N, B, ...] -> rows b * N + i (the stacked module's layout)."""
    return tensor.transpose(0, 1).flatten(0, 1)


@pytest.mark.parametrize(
    "name, vectorized, clip",
    [
        ("tiny", False, False),
        ("tiny", True, False),
        ("slotnet_narrow_skipblank", False, False),
        ("slotnet_narrow_skipblank", True, False),
        ("slotnet_narrow_skipblank", False, True),
    ],
)
def test_stacked_steps_equal_each_member_alone(name: str, vectorized: bool, clip: bool) -> None:
    """Two Adam steps of the stacked module (one optimizer, the mean loss; with `clip`, each
    member's gradients clipped by its own norm) give every member the weights, BatchNorm running
    statistics and logits of its own two steps."""
    alone = _models(name)
    stacked = StackedMembers(copy.deepcopy(alone), vectorized=vectorized)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3) for m in alone]
    joint = torch.optim.Adam(stacked.parameters(), lr=1e-2, weight_decay=1e-3)
    for step in range(2):
        images, labels, keys = _batch(step)
        joint.zero_grad()
        logits = stacked(_interleaved(images), _interleaved(keys))
        sequence_loss(logits, _interleaved(labels)).backward()
        if clip:
            clip_members(stacked.parameters(), MAX_NORM)
        joint.step()
        for i, (model, optimizer) in enumerate(zip(alone, optimizers, strict=True)):
            optimizer.zero_grad()
            own = model(images[i], keys[i])
            sequence_loss(own, labels[i]).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
            optimizer.step()
            torch.testing.assert_close(logits.unflatten(0, (BATCH, MEMBERS))[:, i], own)
    for i, model in enumerate(alone):
        for key, value in model.state_dict().items():
            torch.testing.assert_close(stacked.member_state(i)[key], value, msg=key)


def test_ensemble_scores_are_members_then_mean_softmax() -> None:
    models = [m.eval() for m in _models("tiny")]
    stacked = StackedMembers(models, vectorized=False).eval()
    images = _batch(0)[0][0]
    scores = MemberEnsemble(stacked)(images)
    members = torch.stack([m(images) for m in models])
    assert scores.shape == (MEMBERS + 1, BATCH, 3, 11)
    torch.testing.assert_close(scores[:MEMBERS], members.float())
    mean = members.float().softmax(-1).mean(0)
    torch.testing.assert_close(scores[-1].exp(), mean)
    torch.testing.assert_close(EnsembleOutput(stacked)(images), scores[-1])


def test_member_state_round_trip() -> None:
    models = _models("slotnet_narrow_skipblank")
    stacked = StackedMembers(models, vectorized=False)
    stacked.load_member_state(1, models[2].state_dict())
    for key, value in models[2].state_dict().items():
        torch.testing.assert_close(stacked.member_state(1)[key], value)
    assert set(stacked.state_dict()) == {f"members.{key}" for key in models[0].state_dict()}


def test_vectorized_members_take_the_static_skip_blank_path() -> None:
    stacked = StackedMembers(_models("slotnet_narrow_skipblank"), vectorized=True)
    assert stacked.members.static_shapes is True
