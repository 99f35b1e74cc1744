"""Model registry and the reference architecture."""

from __future__ import annotations

import pytest
import torch

from seqtrain.common.errors import UserError
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
    from seqtrain.models.flops import forward_flops

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


def _sequences(lengths: list[int]) -> torch.Tensor:
    """Images whose first `length` slots hold ink and whose other slots are black."""
    x = torch.zeros(len(lengths), 1, 28, 84)
    for row, length in enumerate(lengths):
        x[row, ..., : 28 * length] = torch.rand(1, 28, 28 * length)
    return x


def test_skipblank_answers_blank_slots_without_the_cnn_and_inked_ones_like_slotnet_deep():
    from seqtrain.data.format import BLANK

    full, skipping = build_model("slotnet_deep"), build_model("slotnet_deep_skipblank")
    skipping.load_state_dict(full.state_dict())  # the same weights: only the blank path differs
    full.eval(), skipping.eval()
    x = _sequences([1, 3, 2])
    inked = x.unflatten(3, (3, 28)).amax((1, 2, 4)) > 0
    with torch.no_grad():
        expected, logits = full(x), skipping(x)
    torch.testing.assert_close(logits[inked], expected[inked])
    assert (logits[~inked].argmax(-1) == BLANK).all()
    assert torch.nn.functional.cross_entropy(logits[~inked], torch.full((3,), BLANK)) < 1e-9


def test_skipblank_trains_batchnorm_on_digits_only():
    """A batch of one-digit sequences: BatchNorm's batch has the digit slots only (B, not 3B)."""
    model = build_model("slotnet_deep_skipblank").train()
    seen: list[int] = []
    model.features[0].register_forward_hook(lambda _m, inputs, _o: seen.append(len(inputs[0])))
    model(_sequences([1, 1, 1, 1])).sum().backward()
    assert seen == [4]


def test_skipblank_costs_in_proportion_to_the_digits_drawn():
    from seqtrain.models.flops import forward_flops

    full = forward_flops(lambda: build_model("slotnet_deep"))
    skipping = [
        forward_flops(lambda: build_model("slotnet_deep_skipblank"), weights)
        for weights in ((1, 1, 1), (0, 0, 1), (1, 0, 0))
    ]
    assert skipping == pytest.approx([full * 2 / 3, full, full / 3], rel=1e-3)


def test_narrow_is_a_quarter_of_deep_at_half_the_width():
    from seqtrain.models.flops import forward_flops

    narrow = forward_flops(lambda: build_model("slotnet_narrow_skipblank"))
    deep = forward_flops(lambda: build_model("slotnet_deep_skipblank"))
    assert narrow == pytest.approx(deep / 4, rel=0.02)
    assert num_params(build_model("slotnet_narrow_skipblank")) == 72_731
    slim = forward_flops(lambda: build_model("slotnet_slim_skipblank"))
    assert slim == pytest.approx(narrow * (12 / 16) ** 2, rel=0.03)  # 3/4 of narrow's width
    # lean drops narrow's second 28x28 conv (16 -> 16 channels, 3x3): 28 * 28 * 9 * 16 * 16 MACs
    lean = forward_flops(lambda: build_model("slotnet_lean_skipblank"))
    per_slot_conv = 2 * 28 * 28 * 9 * 16 * 16
    assert narrow - lean == pytest.approx(per_slot_conv * 2, rel=0.03)  # 2 inked slots on average
