"""The static skip-blank path (every slot through the CNN, masked BatchNorm statistics, the blank
answer by torch.where) against the dynamic one (the CNN on the inked slots only): the same
logits, gradients and BatchNorm running statistics on the same batch and weights."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.functional import cross_entropy

from seqtrain.data.format import BLANK
from seqtrain.models import build_model
from seqtrain.models.masked_batchnorm import MaskedBatchNorm2d
from seqtrain.models.slotnet import SlotNet, use_static_shapes
from support import REPO

# Sequence lengths per sample: mixed, no slot inked, every slot inked.
BATCHES = {"mixed": [1, 3, 2, 1, 2, 3, 1], "all_blank": [0, 0, 0], "all_inked": [3, 3, 3, 3]}


def sequences(lengths: list[int], seed: int = 0) -> torch.Tensor:
    """Images whose first `length` slots hold ink and whose other slots are black."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), 1, 28, 84)
    for row, length in enumerate(lengths):
        x[row, ..., : 28 * length] = torch.rand(1, 28, 28 * length, generator=g)
    return x


def twins(name: str) -> tuple[SlotNet, SlotNet]:
    """The model `name` on the dynamic path and a copy (same weights) on the static one."""
    torch.manual_seed(0)
    dynamic = build_model(name)
    static = copy.deepcopy(dynamic)
    use_static_shapes(dynamic, False)
    use_static_shapes(static, True)
    return dynamic, static


def train_pass(model: SlotNet, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A training forward with dropout keys, and the backward where the loss has a graph (the
    dynamic path's all-blank batch runs no parameter)."""
    model.train()
    logits = model(x, torch.arange(len(x)) * 7919 + 11)
    loss = cross_entropy(logits.flatten(0, 1), labels.flatten())
    if loss.requires_grad:
        loss.backward()
    return logits.detach()


def grads(model: SlotNet) -> dict[str, torch.Tensor]:
    return {
        name: torch.zeros_like(p) if p.grad is None else p.grad
        for name, p in model.named_parameters()
    }


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", ["slotnet_narrow_skipblank", "slotnet_lean_skipblank"])
def test_static_trains_like_dynamic(name: str, batch: str) -> None:
    """In float64: in float32 the two paths' BatchNorm outputs differ in the last bit, enough
    to flip a near tie in a max pool and send one pixel's gradient to its neighbour (with
    average pools the float32 gradients agree to 1e-5)."""
    dynamic, static = (model.double() for model in twins(name))
    x = sequences(BATCHES[batch]).double()
    labels = torch.randint(0, 11, (len(x), 3), generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # the second pass normalises with the first's running statistics mixed in
        dynamic.zero_grad(), static.zero_grad()
        expected, logits = train_pass(dynamic, x, labels), train_pass(static, x, labels)
        torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grads(static), grads(dynamic), rtol=1e-8, atol=1e-12)
    # Running mean/var and num_batches_tracked (untouched by the all-blank batch) alike.
    torch.testing.assert_close(dict(static.named_buffers()), dict(dynamic.named_buffers()))
    if batch == "all_blank":
        assert all(b.num_batches_tracked == 0 for b in bn_layers(static))
        assert all(g.abs().max() == 0 for g in grads(static).values())
    else:
        assert all(g.abs().max() > 0 for g in grads(static).values())
    assert (logits.argmax(-1)[x.unflatten(3, (3, 28)).amax((1, 2, 4)) == 0] == BLANK).all()


def test_static_float32_logits_and_running_statistics_match_dynamic() -> None:
    dynamic, static = twins("slotnet_narrow_skipblank")
    x = sequences(BATCHES["mixed"])
    labels = torch.randint(0, 11, (len(x), 3), generator=torch.Generator().manual_seed(1))
    expected, logits = train_pass(dynamic, x, labels), train_pass(static, x, labels)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(dict(static.named_buffers()), dict(dynamic.named_buffers()))


def bn_layers(model: SlotNet) -> list[MaskedBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, MaskedBatchNorm2d)]


def test_eval_uses_running_statistics_on_both_paths() -> None:
    """A committed skip-blank model (trained running statistics) gives the same eval logits on
    both paths, and its checkpoint loads unchanged into either."""
    weights = load_file(REPO / "experiments" / "models" / "lean_0.03pflop" / "model.safetensors")
    dynamic, static = twins("slotnet_lean_skipblank")
    for model in (dynamic, static):
        model.load_state_dict(weights)
        model.eval()
    x = sequences([1, 2, 3, 0])
    with torch.no_grad():
        torch.testing.assert_close(static(x), dynamic(x), rtol=1e-5, atol=1e-5)
    assert set(static.state_dict()) == set(weights)


def test_masked_batchnorm_matches_batchnorm_on_the_chosen_rows() -> None:
    """Batch and running statistics (momentum and cumulative average) as nn.BatchNorm2d's on
    the chosen rows; the chosen rows' output does not depend on the unchosen rows."""
    x = torch.randn(6, 4, 5, 5) * 3 + 1
    chosen = torch.tensor([True, False, True, True, False, True])
    for momentum in (0.1, None):
        masked = MaskedBatchNorm2d(4, momentum=momentum)
        plain = torch.nn.BatchNorm2d(4, momentum=momentum)
        for _ in range(3):
            out = masked(x, chosen)
            torch.testing.assert_close(out[chosen], plain(x[chosen]))
        torch.testing.assert_close(masked.state_dict(), plain.state_dict())
    rows = x.clone().requires_grad_()
    MaskedBatchNorm2d(4)(rows, chosen)[chosen].sum().backward()
    assert rows.grad[~chosen].abs().max() == 0


@pytest.mark.parametrize("chosen", [[True, False, True, False], [False] * 4, [True] * 4])
def test_masked_batchnorm_backward_is_the_derivative_of_its_forward(chosen: list[bool]) -> None:
    """The hand-written backward against finite differences, every row's output counted."""
    layer = MaskedBatchNorm2d(3).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: layer(x, torch.tensor(chosen)), (x,))
    assert torch.autograd.gradcheck(
        lambda w, b: torch.func.functional_call(
            layer, {"weight": w, "bias": b}, (x.detach(), torch.tensor(chosen))
        ),
        (
            layer.weight.detach().clone().requires_grad_(),
            layer.bias.detach().clone().requires_grad_(),
        ),
    )


def test_the_path_is_chosen_by_device_and_refused_with_foreign_batchnorm() -> None:
    model = build_model("slotnet_narrow_skipblank")
    assert not model.takes_static_path(torch.device("cpu"))  # measured faster there
    assert model.takes_static_path(torch.device("cuda"))
    use_static_shapes(model, True)
    assert model.takes_static_path(torch.device("cpu"))
    model.features[1] = torch.nn.BatchNorm2d(16)  # as SyncBatchNorm's conversion replaces it
    with pytest.raises(ValueError, match="sync-batchnorm off"):
        model(sequences([1]))
    use_static_shapes(model, None)
    assert not model.takes_static_path(torch.device("cuda"))


def test_static_path_runs_under_vmap_as_each_member_alone() -> None:
    """An ensemble stacked with torch.func (one model for N members) needs the static path:
    vmap cannot branch on `inked.any()`. Each member's logits and running statistics equal
    its own forward's."""
    torch.manual_seed(0)
    members = [build_model("slotnet_lean_skipblank").train() for _ in range(3)]
    use_static_shapes(torch.nn.ModuleList(members), True)
    params, buffers = stack_module_state(members)
    skeleton = copy.deepcopy(members[0]).to("meta")
    x = torch.stack([sequences(BATCHES["mixed"], seed) for seed in range(3)])
    keys = torch.arange(3 * len(x[0])).view(3, -1)

    def member(p: dict, b: dict, images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (images, k))

    stacked = vmap(member)(params, buffers, x, keys)
    for index, alone in enumerate(members):
        torch.testing.assert_close(stacked[index], alone(x[index], keys[index]))
        for name, buffer in alone.named_buffers():
            torch.testing.assert_close(buffers[name][index], buffer)
