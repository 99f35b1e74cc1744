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
        rows = weights.to(x.dtype).view(-1, 1, 1, 1)
        with torch.no_grad():  # _MaskedNorm's backward carries the statistics' gradient
            mean, var, count = _masked_moments(x, rows)
        chosen = count > 0
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, count, chosen)
        # Unchosen rows only: with nothing chosen, normalise by (0, 1) rather than (0, 0).
        invstd = torch.rsqrt(torch.where(chosen, var, torch.ones_like(var)) + self.eps)
        if self.affine:
            return _MaskedNorm.apply(x, rows, mean, invstd, self.weight, self.bias)
        return _MaskedNorm.apply(x, rows, mean, invstd, torch.ones_like(mean), None)

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


class _MaskedNorm(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias for statistics of the rows where `rows` is 1,
    with BatchNorm's backward written out (autograd through the statistics' formulas costs
    about three times the passes over the batch): the gradient of x reaches it directly and,
    on the chosen rows, through the mean and the variance. `mean` and `invstd` come in
    detached; their gradient is part of x's."""

    generate_vmap_rule = True  # torch.func.vmap: an ensemble stacked as one model

    @staticmethod
    def forward(
        x: Tensor,
        rows: Tensor,
        mean: Tensor,
        invstd: Tensor,
        weight: Tensor,
        bias: Tensor | None,
    ) -> Tensor:
        scale = invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        return torch.addcmul(_channels(shift).to(x.dtype), x, _channels(scale).to(x.dtype))

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        x, rows, mean, invstd, weight, _bias = inputs
        ctx.save_for_backward(x, rows, mean, invstd, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        x, rows, mean, invstd, weight = ctx.saved_tensors
        wide = mean.dtype
        grad_sum = grad.sum((0, 2, 3), dtype=wide)
        # sum(grad * xhat) per channel, xhat = (x - mean) * invstd
        grad_xhat = ((grad * x).sum((0, 2, 3), dtype=wide) - mean * grad_sum) * invstd
        values = (rows.sum().to(wide) * (x.shape[2] * x.shape[3])).clamp_min(1)
        direct = invstd * weight
        # The chosen rows' share: direct * (grad_sum + xhat * grad_xhat) / values, as one
        # multiply-add in x: -(x * slope + offset), masked to the chosen rows.
        slope = direct * invstd * grad_xhat / values
        offset = direct * grad_sum / values - mean * slope
        through_stats = torch.addcmul(
            _channels(-offset).to(x.dtype), x, _channels(-slope).to(x.dtype)
        )
        grad_x = torch.addcmul(through_stats * rows, grad, _channels(direct).to(x.dtype))
        return grad_x, None, None, None, grad_xhat, grad_sum


def _masked_moments(x: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per channel mean and biased variance over the rows where `rows` ([N, 1, 1, 1]) is 1, in
    float32 at least (as BatchNorm keeps its statistics under autocast), and the count of
    values they cover.

    One pass over `x` per moment, accumulated in float32 without a float32 copy of a bf16
    batch: each row's mean and mean square per channel, then pooled over the chosen rows (the
    variance of a union of equal-sized groups: the mean of their variances plus the variance of
    their means), all on [N, C]."""
    wide = torch.promote_types(x.dtype, torch.float32)
    values = x.shape[2] * x.shape[3]
    row_mean = x.sum((2, 3), dtype=wide) / values
    row_square = torch.linalg.vector_norm(x, dim=(2, 3), dtype=wide).square() / values
    row_var = (row_square - row_mean.square()).clamp_min(0)
    weights = rows.view(-1, 1).to(wide)
    chosen_rows = weights.sum().clamp_min(1)
    mean = (row_mean * weights).sum(0) / chosen_rows
    var = ((row_var + (row_mean - mean).square()) * weights).sum(0) / chosen_rows
    return mean, var, weights.sum() * values


def _channels(per_channel: Tensor) -> Tensor:
    """[C] -> [1, C, 1, 1], to broadcast over an NCHW (or channels-last) batch."""
    return per_channel.view(1, -1, 1, 1)
