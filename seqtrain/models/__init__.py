"""Model registry: architectures by `--model` name.

Every model maps float images [B, 1, 28, 84] in [0, 1] to logits [B, 3, 11] and knows
nothing of ranks, devices or precision (those are applied from outside by the loop).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from seqtrain.common.errors import UserError
from seqtrain.models.reference import ReferenceNet
from seqtrain.models.slotnet import (
    SLOTNET_DEEP_STAGES,
    SLOTNET_LEAN_STAGES,
    SLOTNET_NARROW_STAGES,
    SLOTNET_SLIM_STAGES,
    SlotNet,
)
from seqtrain.models.tiny import TinyNet

MODELS: dict[str, Callable[[], nn.Module]] = {
    "reference": ReferenceNet,
    "slotnet": SlotNet,
    "slotnet_deep": partial(SlotNet, SLOTNET_DEEP_STAGES),
    "slotnet_deep_skipblank": partial(SlotNet, SLOTNET_DEEP_STAGES, skip_blank=True),
    "slotnet_narrow_skipblank": partial(SlotNet, SLOTNET_NARROW_STAGES, skip_blank=True),
    "slotnet_slim_skipblank": partial(SlotNet, SLOTNET_SLIM_STAGES, skip_blank=True),
    "slotnet_lean_skipblank": partial(SlotNet, SLOTNET_LEAN_STAGES, skip_blank=True),
    "tiny": TinyNet,
}


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def build_model(name: str) -> nn.Module:
    """Instantiate a registered model; an unknown name is a UserError listing the known ones."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise UserError(
            f"--model {name!r} is unknown; choose one of: {', '.join(model_names())}"
        ) from None
    return factory()
