"""FLOP counting and the MFU figure the trainer logs."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from seqtrain.flops import flops_per_sample, forward_flops, peak_flops, throughput_metrics
from seqtrain.models import build_model


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


def test_mfu_uses_the_peak_of_the_named_device_and_precision():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "no") == 19.5e12
    assert peak_flops("Some Future GPU", "bf16") is None
    assert peak_flops(None, "bf16") is None

    metrics = throughput_metrics(100_000, 800_000_000, peak_flops("NVIDIA H200", "bf16"))
    assert metrics["train/tflops"] == pytest.approx(80.0)
    assert metrics["train/mfu"] == pytest.approx(80e12 / 989e12)


def test_unknown_device_logs_flops_without_mfu():
    assert throughput_metrics(10.0, 1e9, None) == {"train/tflops": pytest.approx(0.01)}
