"""Model FLOPs per sample, achieved FLOP/s and MFU (model FLOPs utilisation).

FLOPs are counted, not estimated: forward passes of the model on one CPU sample per sequence
length under `torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products,
2 FLOPs per multiply-accumulate). A training step costs about 3x the forward (forward + backward for
activations + backward for weights). MFU is one device's achieved model FLOP/s over its dense
peak for the math mode in use (bf16/fp16 autocast, else TF32 where torch allows it, else fp32);
it is reported only for GPUs in `PEAKS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seqtrain.data.format import DIGIT_SIZE, IMAGE_SHAPE

TRAIN_FORWARD_RATIO = 3


@dataclass(frozen=True)
class Peak:
    """Dense (no sparsity) peak FLOP/s of one GPU model per math mode; None: no such unit."""

    pattern: str  # regex searched in torch.cuda.get_device_name(), case-insensitive
    fp16: float
    bf16: float | None
    tf32: float | None
    fp32: float


# NVIDIA's product datasheets (A100, A10, L4, L40S, H100, H200, V100, T4), tensor-core figures
# halved where the sheet quotes them "with sparsity". Word boundaries keep "A10" from matching
# "A100"/"A10G" and "H200" from matching "GH200"; the first match wins, so the NVL and PCIe
# variants come before the plain (SXM) name.
PEAKS: tuple[Peak, ...] = (
    Peak(r"\bH200 NVL\b", 835.5e12, 835.5e12, 417.5e12, 60e12),
    Peak(r"\bH200\b", 989.5e12, 989.5e12, 494.5e12, 67e12),
    Peak(r"\bH100 NVL\b", 835.5e12, 835.5e12, 417.5e12, 60e12),
    Peak(r"\bH100 PCIe\b", 756.5e12, 756.5e12, 378e12, 51e12),
    Peak(r"\bH100\b", 989.5e12, 989.5e12, 494.5e12, 67e12),  # SXM5 ("H100 80GB HBM3")
    Peak(r"\bA100\b", 312e12, 312e12, 156e12, 19.5e12),  # SXM4 and PCIe alike
    Peak(r"\bL40S\b", 362e12, 362e12, 183e12, 91.6e12),
    Peak(r"\bL4\b", 121e12, 121e12, 60e12, 30.3e12),
    Peak(r"\bA10\b", 125e12, 125e12, 62.5e12, 31.2e12),
    Peak(r"\bV100S\b", 130e12, None, None, 16.4e12),
    Peak(r"\bV100-PCIE\b", 112e12, None, None, 14e12),
    Peak(r"\bV100\b", 125e12, None, None, 15.7e12),  # SXM2
    Peak(r"\bT4\b", 65e12, None, None, 8.1e12),
)


def forward_flops(
    build: Callable[[], nn.Module], length_weights: Sequence[float] = (1.0, 1.0, 1.0)
) -> float:
    """FLOPs of one forward pass per sample of the model `build()` makes, averaged over sequence
    lengths 1..3 weighted as the data drew them (the manifest's `length_weights`): a model that
    skips blank slots costs less on short sequences; for the others every length costs the same.

    The model runs in eval mode on CPU on one sample of each length (ones where digits are, the
    rest zeros); the global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        model = build().eval()
        per_length = [_counted_flops(model, _sample_of_length(n)) for n in (1, 2, 3)]
    return sum(w * f for w, f in zip(length_weights, per_length, strict=True)) / sum(length_weights)


def _sample_of_length(digits: int) -> torch.Tensor:
    sample = torch.zeros(1, 1, *IMAGE_SHAPE)
    sample[..., : digits * DIGIT_SIZE] = 1.0
    return sample


def _counted_flops(model: nn.Module, sample: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(sample)
    return counter.get_total_flops()


def flops_per_sample(
    build: Callable[[], nn.Module],
    training: bool = True,
    length_weights: Sequence[float] = (1.0, 1.0, 1.0),
) -> float:
    """Model FLOPs per sample of a training step (3x forward) or of inference."""
    return forward_flops(build, length_weights) * (TRAIN_FORWARD_RATIO if training else 1)


def math_mode(mixed_precision: str) -> str:
    """What the model's convolutions and matrix products compute in: the autocast dtype, or for
    `no` TF32 where torch allows it (cuDNN convolutions do by default), else fp32."""
    if mixed_precision in ("bf16", "fp16"):
        return mixed_precision
    return "tf32" if _tf32_allowed("conv") or _tf32_allowed("matmul") else "fp32"


def _tf32_allowed(op: str) -> bool:
    """TF32 allowed for cuDNN `conv` or cuBLAS `matmul`. torch >= 2.9 has per-operator
    `fp32_precision` settings ("none" inherits from the parent); older torch the allow_tf32 flags
    (reading cudnn.allow_tf32 raises on torch >= 2.9 once the two APIs were mixed)."""
    backends = torch.backends
    if not hasattr(backends, "fp32_precision"):
        return backends.cudnn.allow_tf32 if op == "conv" else backends.cuda.matmul.allow_tf32
    leaf = backends.cudnn.conv if op == "conv" else backends.cuda.matmul
    chain = [leaf.fp32_precision, backends.cudnn.fp32_precision, backends.fp32_precision]
    return next((p for p in chain if p != "none"), "ieee") == "tf32"


def peak_flops(device_name: str | None, mode: str) -> tuple[str, float] | None:
    """(math mode, dense peak FLOP/s) of a known GPU for `mode` (see `math_mode`); TF32 falls
    back to fp32 on GPUs without TF32 units. None when the GPU or the mode is unknown."""
    peak = next(
        (p for p in PEAKS if device_name and re.search(p.pattern, device_name, re.IGNORECASE)),
        None,
    )
    if peak is None:
        return None
    if mode == "tf32" and peak.tf32 is None:
        mode = "fp32"
    value = getattr(peak, mode)
    return (mode, value) if value else None


def device_name(device: torch.device) -> str | None:
    """The GPU's marketing name, None for CPU and other devices."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def mfu_peak(device: torch.device, mixed_precision: str) -> tuple[float | None, str]:
    """The peak FLOP/s MFU is taken against on `device` (None: not logged) and a line saying
    which, for the log at start."""
    name = device_name(device)
    found = peak_flops(name, math_mode(mixed_precision))
    if found is None:
        return None, f"MFU not logged: no known peak FLOP/s for {name or device.type}"
    mode, value = found
    return (
        value,
        f"MFU per device against the {name}'s dense {mode} peak ({value / 1e12:g} TFLOP/s)",
    )


def throughput_metrics(
    job_samples_per_s: float, flops_per_sample: float, num_processes: int, peak: float | None
) -> dict[str, float]:
    """`train/tflops_job` (model TFLOP/s of all processes together) and, with a known peak,
    `train/mfu_per_device` (0-1: one process's share against one device's peak)."""
    achieved = job_samples_per_s * flops_per_sample
    metrics = {"train/tflops_job": achieved / 1e12}
    if peak:
        metrics["train/mfu_per_device"] = achieved / num_processes / peak
    return metrics
