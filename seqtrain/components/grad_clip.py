"""--clip-grad-norm: the gradients scaled down to a global L2 norm, and that norm logged.

Called between the backward pass and the optimizer step. Under DDP the backward pass leaves
every rank the same all-reduced (averaged) gradients, so each rank's norm over its full copy of
the parameters *is* the global norm, the same number on every rank: every rank scales by the
same factor and the replicas stay identical, with no communication of its own.
`accelerator.clip_grad_norm_` unscales fp16 gradients (the GradScaler) first, so the limit
applies to the true gradients; a step whose fp16 gradients overflowed (norm inf) is then
skipped by the scaler, as without clipping. bf16 and fp32 have no scaler.

Stacked --members models (`members` > 1) clip each member by its own norm, as its own run would
(`clip_members`); the logged norm is then the members' mean.

The norms before clipping stay on the device (one add per step into the same tensor, so a
captured step replays it); the host counts the clipped steps itself (`count`), and the loop
logs their mean once per --log-every window, read with the window's loss (`lagged_log.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from accelerate import Accelerator
from torch import nn


class GradClip:
    """Clips to `max_norm` and keeps the sum of the pre-clip norms since the last read."""

    def __init__(self, max_norm: float, device: torch.device, members: int = 1) -> None:
        self.max_norm = max_norm
        self.members = members
        self._norm_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._steps = 0

    def __call__(self, accelerator: Accelerator, model: nn.Module) -> None:
        """Clip `model`'s gradients before an optimizer step: `clip_on_device` and `count`."""
        if self.clip_on_device(accelerator, model):
            self.count()

    def clip_on_device(self, accelerator: Accelerator, model: nn.Module) -> bool:
        """The device work of a clip (no host value; True if it clipped). A micro step whose
        gradients are not synchronised yet (accumulation) is left alone: its norm is no
        global one."""
        if not accelerator.sync_gradients:
            return False
        if self.members == 1:
            self._norm_sum += accelerator.clip_grad_norm_(model.parameters(), self.max_norm)
        else:
            accelerator.unscale_gradients()  # fp16: the limit is on the true gradients
            self._norm_sum += clip_members(model.parameters(), self.max_norm).mean()
        return True

    def count(self) -> None:
        """The host's count of one clipped step."""
        self._steps += 1

    def take_window(self) -> tuple[torch.Tensor, int]:
        """The sum of the pre-clip norms since the last call (a device copy, nothing read) and
        the number of clipped steps it holds; both start again from zero."""
        taken, steps = self._norm_sum.clone(), self._steps
        self._norm_sum.zero_()
        self._steps = 0
        return taken, steps


@torch.no_grad()
def clip_members(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Stacked members' gradients (dim 0: the member) each scaled down to `max_norm` by its own
    L2 norm over all parameters, as `torch.nn.utils.clip_grad_norm_` scales one model's; returns
    the members' norms before clipping ([N])."""
    grads = [p.grad for p in parameters if p.grad is not None]
    per_tensor = [g.reshape(len(g), -1).norm(dim=1) for g in grads]
    norms = torch.stack(per_tensor).norm(dim=0)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # torch's clip_grad_norm_ coefficient
    for grad in grads:
        grad.mul_(scale.to(grad.dtype).view(-1, *[1] * (grad.dim() - 1)))
    return norms
