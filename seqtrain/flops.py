"""Model FLOPs per sample, achieved FLOP/s and MFU (model FLOPs utilisation).

FLOPs are counted, not estimated: one forward pass of the model on a meta-device input under
`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products, 2 FLOPs per
multiply-accumulate). A training step costs about 3x the forward (forward + backward for
activations + backward for weights). MFU is achieved model FLOP/s over the device's dense peak
for the precision in use; it is reported only for devices in `PEAK_FLOPS`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seqtrain.data.format import IMAGE_SHAPE

TRAIN_FORWARD_RATIO = 3

# Dense peak FLOP/s per device: (name fragment, tensor-core bf16/fp16, plain fp32), the first
# fragment found in the device name wins (so the PCIe H100 comes before the SXM one).
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 67e12),
    ("H100 PCIe", 756e12, 51e12),
    ("H100", 989e12, 67e12),
    ("A100", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
    ("A10G", 70e12, 31.2e12),
    ("V100", 125e12, 15.7e12),
)


def forward_flops(build: Callable[[], nn.Module]) -> int:
    """FLOPs of one forward pass per sample of the model `build()` makes.

    The model is built on the meta device (no memory, no computation, the global RNG untouched)
    and run in eval mode on one sample.
    """
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build().eval()
        sample = torch.empty(1, 1, *IMAGE_SHAPE)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(sample)
    return counter.get_total_flops()


def flops_per_sample(build: Callable[[], nn.Module], training: bool = True) -> int:
    """Model FLOPs per sample of a training step (3x forward) or of inference."""
    return forward_flops(build) * (TRAIN_FORWARD_RATIO if training else 1)


def peak_flops(device_name: str | None, mixed_precision: str) -> float | None:
    """Dense peak FLOP/s of a known GPU for the precision in use; None when unknown."""
    if not device_name:
        return None
    for fragment, tensor_core, fp32 in PEAK_FLOPS:
        if fragment.lower() in device_name.lower():
            return fp32 if mixed_precision == "no" else tensor_core
    return None


def device_name(device: torch.device) -> str | None:
    """The GPU's marketing name, None for CPU and other devices."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def throughput_metrics(
    samples_per_s: float, flops_per_sample: int, peak: float | None
) -> dict[str, float]:
    """`train/tflops` (achieved model TFLOP/s) and, with a known peak, `train/mfu` (0-1)."""
    achieved = samples_per_s * flops_per_sample
    metrics = {"train/tflops": achieved / 1e12}
    if peak:
        metrics["train/mfu"] = achieved / peak
    return metrics
