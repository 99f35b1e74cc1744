"""Adam(W) whose per-step hyperparameters live on the device, stepped without Accelerate's wrapper.

A captured step (a CUDA graph) freezes every Python number it was recorded with, so the values
the schedules change per step are device tensors the optimizer reads and the host overwrites in
place (`set_hyperparameters`: a kernel launch, no host sync): the LR always, and beta1 under
`--sched onecycle`, whose momentum cycles. torch's fused Adam reads a tensor LR but only float
betas, so onecycle on CUDA takes the capturable multi-tensor Adam (tensor LR and betas); every
other case takes the fused one, on CPU too (the fastest there as well). On CUDA both are built
`capturable` (torch refuses to capture an optimizer's step otherwise; fused Adam computes the
same either way).

Accelerate's `AcceleratedOptimizer.step` looks up an optional package on every call (an
uncached `importlib.util.find_spec`) and its `zero_grad` calls `inspect.signature`: tens of
microseconds of host time per step. Without a GradScaler (every precision but fp16) the wrapper
only forwards both calls, so `zero_grad`/`step` call the wrapped optimizer directly; the wrapper
stays what Accelerate checkpoints. Gradients are zeroed in place, never freed: their storage,
like the parameters' and the optimizer state's, is the same at every step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn
from torch.optim import Adam, AdamW, Optimizer

from seqtrain.config import OptimConfig

_DEFAULT_BETAS = (0.9, 0.999)


def build_optimizer(
    params: Iterable[nn.Parameter], cfg: OptimConfig, device: torch.device
) -> Optimizer:
    """Adam (or AdamW) with its LR (and, under onecycle on CUDA, its betas) as device tensors."""
    optimizer_class = AdamW if cfg.optimizer == "adamw" else Adam
    lr = torch.tensor(cfg.lr, dtype=torch.float32, device=device)
    capturable = device.type == "cuda"
    if _device_betas(cfg, device):
        betas = tuple(torch.tensor(b, dtype=torch.float32, device=device) for b in _DEFAULT_BETAS)
        return optimizer_class(
            params, lr=lr, betas=betas, weight_decay=cfg.weight_decay, foreach=True,
            capturable=True,
        )  # fmt: skip
    return optimizer_class(
        params, lr=lr, weight_decay=cfg.weight_decay, fused=True, capturable=capturable
    )


def _device_betas(cfg: OptimConfig, device: torch.device) -> bool:
    """Beta1 changes per step (onecycle) and a graph may capture the step (CUDA)."""
    return cfg.sched == "onecycle" and device.type == "cuda"


def set_hyperparameters(optimizer: Optimizer, lr: float, beta1: float | None = None) -> None:
    """Write the LR (and beta1) of every group, in place where they are tensors: a captured
    step reads the new values at its next replay."""
    for group in optimizer.param_groups:
        _assign(group, "lr", lr)
        if beta1 is None:
            continue
        betas = group["betas"]
        if isinstance(betas[0], torch.Tensor):
            betas[0].fill_(beta1)
        else:
            group["betas"] = (beta1, betas[1])


def _assign(group: dict, key: str, value: float) -> None:
    if isinstance(group[key], torch.Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


def hyperparameters_on_device(optimizer: Optimizer, device: torch.device) -> None:
    """After `load_state_dict` (Accelerate's `prepare` calls it too): the loaded param groups
    replace the optimizer's own, with the implementation they were saved with and a checkpoint's
    float LRs (saved before this module) or tensors of another device. Restore the implementation
    built here, its hyperparameters as device tensors, and its step counts where it keeps them
    (on the device, float32, as fused and capturable Adam want them)."""
    inner = _wrapped(optimizer)
    defaults = inner.defaults
    device_betas = isinstance(defaults["betas"][0], torch.Tensor)
    for group in inner.param_groups:
        for key in ("foreach", "fused", "capturable"):
            group[key] = defaults[key]
        group["lr"] = _device_scalar(group["lr"], device)
        betas = group["betas"]
        group["betas"] = (
            tuple(_device_scalar(b, device) for b in betas)
            if device_betas
            else tuple(float(b) for b in betas)
        )
        for param in group["params"]:
            state = inner.state.get(param, {})
            if "step" in state:
                state["step"] = _device_scalar(state["step"], param.device)


def _device_scalar(value: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor) and value.device == device and value.dim() == 0:
        return value
    return torch.tensor(float(value), dtype=torch.float32, device=device)


def _wrapped(optimizer: Optimizer) -> Optimizer:
    return optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer


def zero_grad(optimizer: Optimizer) -> None:
    """Zero the gradients in place (kept allocated), past Accelerate's wrapper."""
    _wrapped(optimizer).zero_grad(set_to_none=False)


def optimizer_step(optimizer: Optimizer) -> None:
    """One optimizer step: through Accelerate's wrapper where a GradScaler (fp16) must unscale
    and may skip it, straight to the optimizer otherwise."""
    if isinstance(optimizer, AcceleratedOptimizer) and optimizer.scaler is not None:
        optimizer.step()
        return
    _wrapped(optimizer).step()
