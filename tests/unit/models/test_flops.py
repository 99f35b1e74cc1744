"""FLOP counting, the peak MFU is taken against, and the MFU figure the trainer logs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

import pytest
import torch

from seqtrain.models import build_model
from seqtrain.models.flops import (
    flops_per_sample,
    forward_flops,
    math_mode,
    mfu_peak,
    peak_flops,
    throughput_metrics,
)


def test_reference_costs_about_0_81_gflop_per_training_sample():
    build = partial(build_model, "reference")
    assert forward_flops(build) == pytest.approx(0.269e9, rel=0.01)
    assert flops_per_sample(build) == pytest.approx(0.81e9, rel=0.01)
    assert flops_per_sample(build, training=False) == forward_flops(build)


def test_counting_leaves_the_global_rng_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    forward_flops(partial(build_model, "reference"))
    assert torch.rand(3).equal(expected)


@pytest.mark.parametrize(
    ("name", "mode", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", ("bf16", 989.5e12)),
        ("NVIDIA H100 PCIe", "bf16", ("bf16", 756.5e12)),
        ("NVIDIA H100 NVL", "bf16", ("bf16", 835.5e12)),  # not the SXM row
        ("NVIDIA H100 NVL", "tf32", ("tf32", 417.5e12)),
        ("NVIDIA H200", "fp16", ("fp16", 989.5e12)),
        ("NVIDIA H200 NVL", "fp32", ("fp32", 60e12)),
        ("NVIDIA A100-SXM4-80GB", "fp32", ("fp32", 19.5e12)),
        ("NVIDIA A100 80GB PCIe", "tf32", ("tf32", 156e12)),
        ("NVIDIA L4", "bf16", ("bf16", 121e12)),
        ("NVIDIA L40S", "tf32", ("tf32", 183e12)),
        ("NVIDIA A10", "bf16", ("bf16", 125e12)),
        ("Tesla V100-SXM2-16GB", "fp16", ("fp16", 125e12)),
        ("Tesla V100-PCIE-32GB", "fp16", ("fp16", 112e12)),
        ("Tesla V100-SXM2-16GB", "tf32", ("fp32", 15.7e12)),  # no TF32 units before Ampere
        ("Tesla T4", "tf32", ("fp32", 8.1e12)),
        ("Tesla T4", "bf16", None),  # no bf16 units: no MFU rather than a wrong one
        ("NVIDIA A10G", "bf16", None),  # neither the A10 nor the A100 row
        ("NVIDIA GH200 480GB", "bf16", None),  # not the H200 row
        ("Some Future GPU", "bf16", None),
        (None, "bf16", None),
    ],
)
def test_peak_of_the_named_device_and_math_mode(name, mode, peak):
    assert peak_flops(name, mode) == peak


def test_fp32_training_on_cuda_is_measured_against_the_tf32_peak_while_allowed(monkeypatch):
    # This torch lets cuDNN convolutions use TF32 by default: the fp32 peak would give MFU > 1.
    assert math_mode("no") == "tf32"
    assert math_mode("bf16") == "bf16"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 NVL")
    peak, line = mfu_peak(torch.device("cuda", 0), "no")
    assert peak == 417.5e12
    assert "NVIDIA H100 NVL" in line and "tf32" in line
    with _conv_tf32_off():
        assert math_mode("no") == "fp32"
        assert mfu_peak(torch.device("cuda", 0), "no")[0] == 60e12
    assert math_mode("no") == "tf32"


@contextlib.contextmanager
def _conv_tf32_off() -> Iterator[None]:
    """cuDNN convolutions in full fp32 (the new per-operator API where torch has it)."""
    new_api = hasattr(torch.backends, "fp32_precision")
    conv = torch.backends.cudnn.conv if new_api else None
    before = conv.fp32_precision if new_api else torch.backends.cudnn.allow_tf32
    try:
        if new_api:
            conv.fp32_precision = "ieee"
        else:
            torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        if new_api:
            conv.fp32_precision = before
        else:
            torch.backends.cudnn.allow_tf32 = before


def test_cpu_has_no_mfu_and_says_so():
    peak, line = mfu_peak(torch.device("cpu"), "no")
    assert peak is None and "MFU not logged" in line and "cpu" in line


def test_mfu_is_per_device_and_tflops_are_the_jobs():
    # 8 devices together at 8 x 10 % of an H200's bf16 peak: the job's TFLOP/s is the sum,
    # MFU is one device's 10 %, not 80 %.
    peak = peak_flops("NVIDIA H200", "bf16")[1]
    flops = 800_000_000
    job_samples_per_s = 8 * 0.10 * peak / flops
    metrics = throughput_metrics(job_samples_per_s, flops, 8, peak)
    assert metrics["train/tflops_job"] == pytest.approx(8 * 0.10 * peak / 1e12)
    assert metrics["train/mfu_per_device"] == pytest.approx(0.10)


def test_unknown_device_logs_flops_without_mfu():
    assert throughput_metrics(10.0, 1e9, 2, None) == {"train/tflops_job": pytest.approx(0.01)}
