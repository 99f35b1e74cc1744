"""Forward and backward of the reference and the static skip-blank nets compile as one graph
(`torch.compile(fullgraph=True)` raises at the first graph break): what a captured step needs.
The eager backend traces exactly as inductor would, without a C++ compiler or a GPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.exc import Unsupported

from seqtrain.components.metrics import sequence_loss
from seqtrain.models import build_model
from seqtrain.models.slotnet import use_static_shapes

# The skip-blank nets share one forward; these two differ in their first stage (two convs at
# 28x28 or one). Each compile takes seconds: the deep and slim widths add nothing to trace.
STATIC_SKIPBLANK = ["slotnet_narrow_skipblank", "slotnet_lean_skipblank"]


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images of 1, 2, 3 and 3 digits (blank slots in the first two), labels, dropout keys."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 28, 84, generator=g)
    images[0, ..., 28:] = 0
    images[1, ..., 56:] = 0
    return images, torch.randint(0, 11, (4, 3), generator=g), torch.arange(4) + 100


def forward_and_backward(model: torch.nn.Module):
    """The step's model work: loss of a keyed-dropout training forward, its backward."""

    def run(images: torch.Tensor, labels: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        loss = sequence_loss(model(images, keys).float(), labels, 0.1)
        loss.backward()
        return loss.detach()

    return run


def compiled(fn):
    # Dynamo breaks the graph at Tensor.backward() unless told to trace autograd calls.
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="eager")


@pytest.mark.parametrize("name", ["reference", *STATIC_SKIPBLANK])
def test_forward_and_backward_compile_without_graph_breaks(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).train()
    eager = copy.deepcopy(model)
    use_static_shapes(eager, True)  # what dynamo's tracing picks (static_shapes None: auto)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        loss = compiled(forward_and_backward(model))(*batch())
    torch.testing.assert_close(loss, forward_and_backward(eager)(*batch()))
    for (key, got), (_, want) in zip(
        model.named_parameters(), eager.named_parameters(), strict=True
    ):
        assert got.grad is not None, key
        torch.testing.assert_close(got.grad, want.grad)


def test_the_dynamic_path_breaks_the_graph() -> None:
    """Why the static path exists: `inked.any()` and mask indexing cannot be traced."""
    model = build_model("slotnet_narrow_skipblank").train()
    use_static_shapes(model, False)
    with (
        torch._dynamo.config.patch(trace_autograd_ops=True),
        pytest.raises(Unsupported, match="Data-dependent branching"),
    ):
        compiled(forward_and_backward(model))(*batch())
