"""Accelerate and device concerns: the process group, precision, device transfer, model placement.

Nothing else in seqtrain reads rank environment variables or picks devices: the loop asks the
Accelerator (built here) and these helpers.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list, gather_object, reduce
from torch import nn

from seqtrain.config import RunConfig
from seqtrain.data.stream import images_to_float
from seqtrain.errors import UserError


def use_cpu(cfg: RunConfig) -> bool:
    return cfg.train.cpu or not torch.cuda.is_available()


def resolved_precision(cfg: RunConfig) -> str:
    """`--mixed-precision` with `auto` decided: bf16 where the GPU has bf16 tensor cores."""
    if cfg.train.mixed_precision != "auto":
        return cfg.train.mixed_precision
    return "no" if use_cpu(cfg) or not torch.cuda.is_bf16_supported() else "bf16"


def join_processes(cfg: RunConfig) -> PartialState:
    """Join the launcher's process group before anything else needs it.

    `cpu=True` on a GPU-less machine makes `accelerate launch --multi_gpu` and `torchrun` form
    one gloo group of CPU ranks instead of N independent rank-0-of-1 runs.
    """
    if cfg.train.mixed_precision == "fp16" and use_cpu(cfg):
        raise UserError("--mixed-precision fp16 needs a GPU (use bf16 on CPU)")
    return PartialState(cpu=use_cpu(cfg), timeout=timedelta(seconds=cfg.train.dist_timeout))


# How a dead or frozen peer surfaces in the surviving ranks' collectives (gloo and NCCL).
_PEER_FAILURES = ("Timed out waiting", "Connection closed by peer", "Connection reset by peer")


@contextlib.contextmanager
def peer_failures_reported() -> Iterator[None]:
    """Turn a collective's failure caused by another rank (killed, or hung past
    --dist-timeout) into one UserError line instead of a backend traceback."""
    try:
        yield
    except RuntimeError as e:
        cause = next((ln for ln in str(e).splitlines() if any(p in ln for p in _PEER_FAILURES)), "")
        if not cause:
            raise
        raise UserError(
            f"another process of the job died or stopped responding ({cause.strip()[:200]}); "
            "rerun with --resume auto"
        ) from None


def from_main_process(value: Any) -> Any:
    """The main process's `value` on every rank (e.g. a timestamp that must agree)."""
    return broadcast_object_list([value], from_process=0)[0]


def shared_across_processes(work: Callable[[int, int], dict]) -> dict:
    """Each process runs `work(part, num_parts)` on its share; every process gets the union of
    the returned dicts (a collective: all processes must call it)."""
    state = PartialState()
    merged: dict = {}
    for one in gather_object([work(state.process_index, state.num_processes)]):
        merged.update(one)
    return merged


def make_accelerator(cfg: RunConfig, run_dir: Path) -> Accelerator:
    return Accelerator(
        cpu=use_cpu(cfg),
        mixed_precision=resolved_precision(cfg),
        log_with=None if cfg.log.wandb_mode == "disabled" else "wandb",
        project_dir=str(run_dir),
        # ReduceLROnPlateau is stepped by us once per epoch, never per optimizer step.
        step_scheduler_with_optimizer=False,
    )


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over all ranks (a copy; the input is left unchanged)."""
    return reduce(tensor, reduction="sum")


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum over all ranks (a copy): e.g. "did any rank see X" from 0/1 flags."""
    out = tensor.clone()
    if PartialState().num_processes > 1:
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.MAX)
    return out


def to_device(
    images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a uint8 batch to the device and convert it there: a quarter of the bytes to copy."""
    images = images_to_float(images.to(device, non_blocking=True))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def prepare_model(model: nn.Module, cfg: RunConfig, device: torch.device) -> nn.Module:
    """Apply memory format and compilation from outside the model code."""
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.model.compile:
        reason = _compile_unsupported(device)
        if reason:
            print(f"seqtrain: --compile skipped: {reason}")
        else:
            # In-place compile keeps state-dict keys unchanged, so checkpoints stay portable.
            model.compile()
    return model


def _compile_unsupported(device: torch.device) -> str | None:
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python/platform"
    if device.type == "cpu" and shutil.which("g++") is None and shutil.which("clang++") is None:
        return "torch.compile on CPU needs a C++ compiler"
    return None
