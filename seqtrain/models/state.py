"""State dicts any process count can load: the key names of the bare model.

A model wrapped for training names its weights with a prefix: DDP's `module.` (Accelerate saves
the prepared model with unwrap=False) and torch.compile's `_orig_mod.`. Checkpoints, the weight
average and exports hold prefix-free keys, so a run saved by 8 DDP processes with a compiled
model loads in one plain process.
"""

from __future__ import annotations

import torch

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def prefix_free(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the wrapper prefixes taken off its keys: the bare model's key names."""
    stripped = {}
    for key, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        stripped[key] = value
    return stripped
