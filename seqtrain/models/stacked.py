"""N models of one architecture trained as one module (`--members N`): an ensemble in one process.

`StackedMembers` holds every member's parameters and buffers stacked on a new leading dimension
(`members.features.0.weight` is [N, 16, 1, 3, 3]), so one optimizer steps all of them and one
checkpoint holds them. Member i's own state is slice i of each tensor (`member_state`).

Training input is interleaved sample-major: row b * N + i is member i's b-th sample (images
[B * N, 1, 28, 84], dropout keys [B * N]) and the logits come back in the same rows. Sample-major
so that cutting the batch into micro-batches along dim 0 cuts every member's batch where a single
run cuts its own. The step's loss over all rows is the mean of the members' losses; the output's
gradient is multiplied by N on the way back, so each member's weights get the gradient of its own
loss, as in a run of its own (Adam's eps and weight decay are not scale-free).

The members run one of two ways, with the same results:
- vectorized: `torch.func.vmap` over `functional_call`, one stream of batched kernels for all
  members (convolutions become grouped ones): the way for a GPU, where N small members would
  otherwise each leave it mostly idle. Data-dependent shapes cannot be vmapped: skip-blank nets
  take their static path (`use_static_shapes`).
- one after another: `functional_call` per member on its slice of the stacked tensors, the
  kernels a single run launches: the way on CPU, where grouped convolutions measured slower than
  the members' own (bench.members).
Either way BatchNorm updates its running statistics in place in the member's slice of the stacked
buffers, and keyed dropout draws each member's masks from its own samples' keys.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from seqtrain.models.slotnet import use_static_shapes

PREFIX = "members."  # the stacked module's state-dict keys: PREFIX + the member's own key


class StackedMembers(nn.Module):
    """`len(models)` models of one architecture as one module (see the module's docstring)."""

    def __init__(self, models: Sequence[nn.Module], vectorized: bool) -> None:
        super().__init__()
        if len(models) < 2:
            raise ValueError("stacking needs two or more models")
        self.count = len(models)
        self.vectorized = vectorized
        self.members = copy.deepcopy(models[0])  # the architecture, holding the stacked tensors
        for name, _ in models[0].named_parameters():
            stacked = _stack([m.get_parameter(name).detach() for m in models])
            _set(self.members, name, nn.Parameter(stacked))
        for name, _ in models[0].named_buffers():
            _set(self.members, name, _stack([m.get_buffer(name) for m in models]))
        if vectorized:
            use_static_shapes(self.members, True)

    def forward(self, x: Tensor, keys: Tensor | None = None) -> Tensor:
        """Interleaved rows in (row b * N + i: member i's sample b), each member's logits out in
        the same rows; in training, the gradient is scaled as the module's docstring says."""
        per_member = x.unflatten(0, (-1, self.count))  # [B, N, ...]
        member_keys = None if keys is None else keys.unflatten(0, (-1, self.count))
        logits = self._run(per_member, member_keys, dim=1).flatten(0, 1)
        if logits.requires_grad:
            logits.register_hook(self._member_gradient)
        return logits

    def member_logits(self, x: Tensor) -> Tensor:
        """Every member's logits for the same batch: [B, ...] -> [N, B, 3, 11]."""
        return self._run(x, None, dim=None)

    def member_state(self, index: int) -> dict[str, Tensor]:
        """Member `index`'s state dict, with the key names of a model of its own (views)."""
        return {name: value[index] for name, value in self.members.state_dict().items()}

    def load_member_state(self, index: int, state: dict[str, Tensor]) -> None:
        """Put a model's state dict (`member_state`'s keys) into member `index`'s slices."""
        with torch.no_grad():
            for name, value in self.members.state_dict().items():
                value[index].copy_(state[name])

    def _member_gradient(self, grad: Tensor) -> Tensor:
        return grad * self.count

    def _run(self, x: Tensor, keys: Tensor | None, dim: int | None) -> Tensor:
        """Each member on its part of `x` (`x` split along `dim`, or whole for dim None):
        [N, B, 3, 11] for dim None, else the members' logits stacked along `dim`."""
        params = dict(self.members.named_parameters())
        buffers = dict(self.members.named_buffers())
        if self.vectorized:
            key_dim = None if keys is None else dim
            # Without keys, dropout draws from torch's generator: each member its own masks.
            call = vmap(self._call_member, in_dims=(0, 0, dim, key_dim), out_dims=dim or 0,
                        randomness="different")  # fmt: skip
            return call(params, buffers, x, keys)
        outputs = []
        for i in range(self.count):
            part = x if dim is None else x.select(dim, i)
            part_keys = None if keys is None else keys.select(dim or 0, i)
            member = ({k: v[i] for k, v in params.items()}, {k: v[i] for k, v in buffers.items()})
            outputs.append(self._call_member(*member, part, part_keys))
        return torch.stack(outputs, dim or 0)

    def _call_member(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, keys: Tensor | None
    ) -> Tensor:
        # Buffers are passed as views of the stacked ones: BatchNorm's in-place running-stat
        # updates land in the member's slice (under vmap too: the buffers are batched with x).
        args = (x,) if keys is None else (x, keys)
        return functional_call(self.members, (params, buffers), args, tie_weights=False)


class MemberEnsemble(nn.Module):
    """The members of a `StackedMembers` scored on one batch: [B, ...] -> [N + 1, B, 3, 11], the
    members' logits, then the ensemble's (their mean softmax, as log-probabilities)."""

    def __init__(self, stacked: StackedMembers) -> None:
        super().__init__()
        self.stacked = stacked

    def forward(self, x: Tensor) -> Tensor:
        logits = self.stacked.member_logits(x).float()
        mean = logits.softmax(-1).mean(0).clamp_min(1e-30).log()
        return torch.cat([logits, mean[None]])


class EnsembleOutput(nn.Module):
    """The ensemble alone, read like any model's logits: [B, ...] -> [B, 3, 11]."""

    def __init__(self, stacked: StackedMembers) -> None:
        super().__init__()
        self.scores = MemberEnsemble(stacked)

    def forward(self, x: Tensor, keys: Tensor | None = None) -> Tensor:
        return self.scores(x)[-1]


def ensemble_output(model: nn.Module) -> nn.Module:
    """A `MemberEnsemble` as its ensemble alone (`EnsembleOutput`); any other model as is."""
    return EnsembleOutput(model.stacked) if isinstance(model, MemberEnsemble) else model


def _stack(tensors: list[Tensor]) -> Tensor:
    """The tensors stacked on a new dim 0, each slice in its tensor's memory layout (e.g. a
    channels-last conv weight stays channels-last: the kernels, hence the numbers, of a run
    of its own)."""
    first = tensors[0]
    out = torch.empty_strided(
        (len(tensors), *first.shape), (first.numel(), *first.stride()),
        dtype=first.dtype, device=first.device,
    )  # fmt: skip
    for slot, tensor in zip(out, tensors, strict=True):
        slot.copy_(tensor)
    return out


def _set(module: nn.Module, name: str, value: Tensor) -> None:
    """Replace the parameter or buffer `name` (dotted) of `module` by `value`."""
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner), leaf, value)
