"""BatchNorm over a chosen subset of the batch, with the batch's shape fixed.

`MaskedBatchNorm2d(x, weights)` normalises every row of `x` but takes the batch statistics
(and updates the running ones) from the rows whose weight is 1 only: what `nn.BatchNorm2d` gives
when called on `x[weights == 1]`, without indexing by data, so the shapes never depend on the
values and nothing waits for the host (a CUDA graph or `torch.compile(fullgraph=True)` can hold
it). It is an `nn.BatchNorm2d`, with its parameter and buffer names: checkpoints are unchanged,
and called without weights (or in eval mode) it is `nn.BatchNorm2d` itself.

Rows of weight 0 are normalised with the chosen rows' statistics (mean 0, variance 1 when no row
is chosen, so they stay finite and their zero gradient never meets an inf) but add nothing to
them: the chosen rows' output does not depend on them, and a caller that discards their output
(SlotNet's `torch.where`) gets exactly the gradient of `nn.BatchNorm2d` over the chosen rows.
With no row chosen the running statistics and `num_batches_tracked` stay as they were, as when
`nn.BatchNorm2d` is not called at all.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics come from the rows where `weights` (shape [N],
    booleans or 0/1 floats) is 1; see the module's docstring."""

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        if weights is None or not (self.training or self.running_mean is None):
            return super().forward(x)
        mean, var, count = _masked_moments(x, weights)
        chosen = count > 0
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, count, chosen)
        # Unchosen rows only: with nothing chosen, normalise by (0, 1) rather than (0, 0).
        var = torch.where(chosen, var, torch.ones_like(var))
        # One multiply-add over the batch (per channel scale and shift): the fewest full-size
        # passes forward and backward, which is what this costs beyond nn.BatchNorm2d.
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.affine else 0)
        return x * _channels(scale).to(x.dtype) + _channels(shift).to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(
        self, mean: Tensor, var: Tensor, count: Tensor, chosen: Tensor
    ) -> None:
        """nn.BatchNorm2d's update (the unbiased variance, the momentum or, with momentum None,
        the cumulative average), in place and only if a row was chosen: no host read."""
        self.num_batches_tracked.add_(chosen.to(self.num_batches_tracked.dtype))
        if self.momentum is None:
            factor = 1.0 / self.num_batches_tracked.clamp_min(1).to(mean.dtype)
        else:
            factor = torch.full_like(count, self.momentum)
        unbiased = var * count / (count - 1).clamp_min(1)
        factor = torch.where(chosen, factor, torch.zeros_like(factor))
        # mul_/add_ rather than lerp_: torch.func.vmap (an ensemble as one model) batches them.
        self.running_mean.mul_(1 - factor).add_(factor * mean)
        self.running_var.mul_(1 - factor).add_(factor * unbiased)


def _masked_moments(x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per channel mean and biased variance over the rows of weight 1, in float32 at least (as
    BatchNorm keeps its statistics under autocast), and the count of values they cover.

    One pass over `x`: each row's mean and variance per channel (torch.var_mean, numerically
    stable), then pooled over the chosen rows (the variance of a union of equal-sized groups:
    the mean of their variances plus the variance of their means), all on [N, C]."""
    row_var, row_mean = torch.var_mean(_wide(x), dim=(2, 3), correction=0)
    rows = weights.to(row_mean.dtype)[:, None]
    chosen_rows = rows.sum().clamp_min(1)
    mean = (row_mean * rows).sum(0) / chosen_rows
    var = ((row_var + (row_mean - mean).square()) * rows).sum(0) / chosen_rows
    return mean, var, rows.sum() * (x.shape[2] * x.shape[3])


def _channels(per_channel: Tensor) -> Tensor:
    """[C] -> [1, C, 1, 1], to broadcast over an NCHW (or channels-last) batch."""
    return per_channel.view(1, -1, 1, 1)


def _wide(x: Tensor) -> Tensor:
    """`x` in float32, or float64 if it is: BatchNorm's arithmetic under autocast."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
