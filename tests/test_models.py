"""Model registry and the reference architecture."""

from __future__ import annotations

import pytest
import torch

from seqtrain.errors import UserError
from seqtrain.models import MODELS, build_model, model_names


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_reference_matches_the_reference_network():
    model = build_model("reference")
    assert num_params(model) == 4_337_441
    assert model(torch.rand(2, 1, 28, 84)).shape == (2, 3, 11)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_images_to_slot_logits(name):
    model = build_model(name).eval()
    logits = model(torch.rand(5, 1, 28, 84))
    assert logits.shape == (5, 3, 11)
    assert logits.dtype == torch.float32


def test_tiny_is_tiny():
    assert num_params(build_model("tiny")) < 10_000


def test_unknown_model_is_a_user_error_listing_the_names():
    with pytest.raises(UserError, match="reference") as info:
        build_model("resnet9000")
    assert "tiny" in str(info.value)
    assert "\n" not in str(info.value)
    assert model_names() == sorted(MODELS)


@pytest.mark.parametrize(("name", "params"), [("slotnet", 131_307), ("slotnet_deep", 288_299)])
def test_slotnets_are_small_and_cheaper_than_the_reference(name, params):
    from seqtrain.flops import forward_flops

    assert num_params(build_model(name)) == params
    assert forward_flops(lambda: build_model(name)) <= 0.7 * forward_flops(
        lambda: build_model("reference")
    )


@pytest.mark.parametrize("name", ["slotnet", "slotnet_deep"])
def test_slotnet_slots_are_independent(name):
    model = build_model(name).eval()
    x = torch.rand(4, 1, 28, 84)
    changed = x.clone()
    changed[..., 56:] = torch.rand(4, 1, 28, 28)  # only the third slot
    with torch.no_grad():
        before, after = model(x), model(changed)
    torch.testing.assert_close(before[:, :2], after[:, :2])
    assert not torch.allclose(before[:, 2], after[:, 2])
