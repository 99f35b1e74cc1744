"""The scaling model (bench/scaling_model.py): the ring all-reduce formula, the overlap of DDP's
buckets with the backward pass, the step at a fixed global or per-GPU batch, and the models'
constants against the real networks."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest

from bench.scaling_model import (
    GPU_COUNTS,
    H200,
    LEAN_SKIPBLANK,
    NET_200,
    NVLINK,
    REFERENCE,
    Link,
    allreduce_table,
    exposed_allreduce_s,
    ring_allreduce_s,
    scaling_rows,
    step_s,
    step_table,
)
from seqtrain.models import build_model
from seqtrain.models.flops import flops_per_sample

BANDWIDTH_ONLY = Link("test", bus_bytes_per_s=1e9, hop_latency_s=0.0)


def test_ring_allreduce_follows_the_nccl_tests_formula() -> None:
    # t = S/B x 2(n-1)/n + 2(n-1) x a
    assert ring_allreduce_s(1e9, 1, NVLINK) == 0.0
    assert ring_allreduce_s(0, 8, NVLINK) == 0.0
    assert ring_allreduce_s(1e9, 2, BANDWIDTH_ONLY) == pytest.approx(1.0)
    assert ring_allreduce_s(1e9, 4, BANDWIDTH_ONLY) == pytest.approx(1.5)
    latency_only = Link("test", bus_bytes_per_s=float("inf"), hop_latency_s=1e-6)
    assert ring_allreduce_s(1e9, 8, latency_only) == pytest.approx(14e-6)


def test_ring_allreduce_grows_with_gpus_and_bytes_and_shrinks_with_bandwidth() -> None:
    times = [ring_allreduce_s(REFERENCE.grad_bytes, n, NET_200) for n in GPU_COUNTS]
    assert times == sorted(times) and len(set(times)) == len(times)
    # the bandwidth term tends to 2 S / B: never twice the 2-GPU figure
    bandwidth = [ring_allreduce_s(1e9, n, BANDWIDTH_ONLY) for n in (2, 64, 10_000)]
    assert bandwidth[0] < bandwidth[1] < bandwidth[2] < 2 * bandwidth[0]
    assert ring_allreduce_s(2e6, 8, NVLINK) > ring_allreduce_s(1e6, 8, NVLINK)
    assert ring_allreduce_s(1e6, 8, NET_200) > ring_allreduce_s(1e6, 8, NVLINK)


def test_only_the_last_bucket_and_what_outlasts_the_backward_are_exposed() -> None:
    one_bucket = replace(REFERENCE, last_bucket_bytes=REFERENCE.grad_bytes)
    whole = ring_allreduce_s(REFERENCE.grad_bytes, 8, NET_200)
    assert exposed_allreduce_s(one_bucket, 8, NET_200, backward_s=1.0) == pytest.approx(whole)
    last = ring_allreduce_s(REFERENCE.last_bucket_bytes, 8, NET_200)
    assert exposed_allreduce_s(REFERENCE, 8, NET_200, backward_s=1.0) == pytest.approx(last)
    early = ring_allreduce_s(REFERENCE.grad_bytes - REFERENCE.last_bucket_bytes, 8, NET_200)
    assert exposed_allreduce_s(REFERENCE, 8, NET_200, backward_s=0.0) == pytest.approx(last + early)


def test_host_bound_step_hides_the_gpu_and_a_syncing_model_adds_them() -> None:
    assert step_s(REFERENCE, 128, 2, NVLINK, H200) == REFERENCE.host_step_s
    no_host = step_s(REFERENCE, 128, 2, NVLINK, H200, host=False)
    assert 0 < no_host < REFERENCE.host_step_s
    lean_gpu = step_s(LEAN_SKIPBLANK, 128, 2, NVLINK, H200, host=False)
    assert step_s(LEAN_SKIPBLANK, 128, 2, NVLINK, H200) == pytest.approx(
        LEAN_SKIPBLANK.host_step_s + lean_gpu
    )


def test_reference_rows_say_when_more_gpus_help() -> None:
    rows = {r.gpus: r for r in scaling_rows(REFERENCE)}
    assert [r.per_gpu_batch for r in rows.values()] == [128, 64, 32, 16, 8, 4, 2]
    assert [r.global_batch for r in rows.values()] == [128 * n for n in GPU_COUNTS]
    assert rows[1].steps_per_epoch == 54_000 // 128
    # the recipe's global batch on today's host-bound step: no GPU count is faster than one
    assert all(r.fixed_global_speedup <= 1.0 for r in rows.values())
    # without the host's time, a second GPU on NVLink nearly halves the step; the network does not
    assert 1.5 < rows[2].no_host_speedup <= 2.0
    assert rows[16].no_host_speedup < 1.0
    # at 128 per GPU: one GPU steps with 256 or 512 in the same host-bound time; with 1,024
    # it is compute-bound and eight GPUs win
    assert rows[2].same_batch_speedup == pytest.approx(1.0)
    assert rows[4].same_batch_speedup == pytest.approx(1.0)
    assert rows[8].same_batch_speedup > 1.0
    assert rows[8].fixed_per_gpu_speedup == pytest.approx(8.0)


def test_tables_have_a_row_per_gpu_count_and_no_nvlink_beyond_a_node() -> None:
    lines = allreduce_table((REFERENCE, LEAN_SKIPBLANK)).splitlines()
    assert len(lines) == 2 + len(GPU_COUNTS)
    assert lines[-1].startswith("| 64 | - | - |")
    table = step_table(scaling_rows(REFERENCE)).splitlines()
    assert len(table) == 2 + len(GPU_COUNTS)
    assert {line.count("|") for line in table} == {table[0].count("|")}


@pytest.mark.parametrize("facts", [REFERENCE, LEAN_SKIPBLANK], ids=lambda f: f.name)
def test_constants_match_the_networks(facts) -> None:
    model = build_model(facts.name)
    assert facts.grad_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    assert 0 < facts.last_bucket_bytes <= facts.grad_bytes
    counted = flops_per_sample(partial(build_model, facts.name))
    assert facts.train_flop_per_sample == pytest.approx(counted, rel=0.01)
