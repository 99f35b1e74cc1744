"""The scaling model: a data-parallel training step on 1-64 GPUs, modelled from named constants.

    .venv/bin/python -m bench.scaling_model

prints the tables of docs/benchmarks/scaling-model.md. Nothing here is measured: the inputs are
the constants below (measured ones name their result file; the others are assumptions, listed
with their reasons in that page), and `bench.scaling` measures what a CPU machine can.

The model, per optimizer step of a model whose gradients are `grad_bytes`:
- ring all-reduce of S bytes over n GPUs: 2(n-1)/n x S / B + 2(n-1) x a, with B the link's
  effective bus bandwidth (NCCL's "busbw") and a the latency of one of the ring's 2(n-1) hops;
- DDP all-reduces gradients in buckets as the backward pass produces them: every bucket but the
  last one can overlap the backward (an upper bound on overlap), the last one cannot;
- the GPU's time: max(kernel floor, batch x training FLOPs per sample / achieved FLOP/s), of which
  2/3 is the backward pass (a training step counts 3x the forward's FLOPs), plus the all-reduce
  that the backward does not hide;
- the step: the host's per-step time (Python, kernel launches) and the GPU's time overlap (the
  host queues work ahead), so the slower of the two; a model that reads a value back to the host
  every step (the skip-blank slot mask) waits for the GPU instead: host + GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)
GPUS_PER_NODE = 8
GLOBAL_BATCH = 128  # the reference recipe's batch
TRAIN_SAMPLES = 54_000  # one epoch of the full-size data set
BACKWARD_SHARE = 2 / 3  # seqtrain.models.flops: a training step counts 3x the forward


@dataclass(frozen=True)
class Link:
    """What carries the all-reduce: effective bus bandwidth at ~MB messages and latency per hop."""

    name: str
    bus_bytes_per_s: float
    hop_latency_s: float


NVLINK = Link("NVLink 150 GB/s", 150e9, 2e-6)
NVLINK_FAST = Link("NVLink 400 GB/s", 400e9, 2e-6)
# one NIC per GPU; 80 % of the line rate as bus bandwidth; 4 us a hop puts a 16-GPU ring's
# small-message all-reduce at about the 120 us a public 2-node H100 nccl-tests run shows
NET_200 = Link("200 Gb/s", 0.8 * 200e9 / 8, 4e-6)
NET_400 = Link("400 Gb/s", 0.8 * 400e9 / 8, 4e-6)


@dataclass(frozen=True)
class Device:
    """One GPU, beyond the host: the FLOP/s this small model could reach and a kernel floor."""

    achieved_flops: float
    kernel_floor_s: float  # the step's kernels back to back (e.g. captured in a CUDA graph)


# assumed: 10 % of the H200's dense bf16 peak (989.5 TFLOP/s, seqtrain.models.flops.PEAKS);
# the eager step reached 21 TFLOP/s while waiting on its host
H200 = Device(achieved_flops=100e12, kernel_floor_s=0.5e-3)


@dataclass(frozen=True)
class ModelFacts:
    name: str
    grad_bytes: int  # parameters x 4 (fp32 gradients, as DDP reduces them)
    last_bucket_bytes: int  # DDP's last bucket: ready when the backward ends
    train_flop_per_sample: float
    host_step_s: float  # the eager step's host time per step
    host_syncs: bool = False  # reads a value back every step: host and GPU do not overlap


REFERENCE = ModelFacts(
    name="reference",
    grad_bytes=17_349_764,  # 4,337,441 parameters
    last_bucket_bytes=1_551_360,  # the convolutions; the 15.8 MB hidden layer and heads go first
    train_flop_per_sample=0.808e9,  # docs/benchmarks/compute-per-sample.md
    host_step_s=5.1e-3,  # measured: H200, batch 128, bf16 (h200_device_check_narrow_long.json)
)
LEAN_SKIPBLANK = ModelFacts(
    name="slotnet_lean_skipblank",
    grad_bytes=281_580,  # 70,395 parameters: one bucket
    last_bucket_bytes=281_580,
    train_flop_per_sample=0.0664e9,
    host_step_s=5.1e-3,  # assumed: the reference's (not measured alone on a GPU)
    host_syncs=True,
)


def ring_allreduce_s(nbytes: float, gpus: int, link: Link) -> float:
    """Seconds of a ring all-reduce of `nbytes` over `gpus` GPUs (0 for one GPU or no bytes)."""
    if gpus == 1 or nbytes == 0:
        return 0.0
    hops = 2 * (gpus - 1)
    return hops / gpus * nbytes / link.bus_bytes_per_s + hops * link.hop_latency_s


def link_for(gpus: int, network: Link, nvlink: Link = NVLINK) -> Link:
    """NVLink inside one node; beyond it the network bounds the ring."""
    return nvlink if gpus <= GPUS_PER_NODE else network


def gpu_compute_s(model: ModelFacts, batch: int, device: Device) -> float:
    return max(device.kernel_floor_s, batch * model.train_flop_per_sample / device.achieved_flops)


def exposed_allreduce_s(model: ModelFacts, gpus: int, link: Link, backward_s: float) -> float:
    """The all-reduce the backward pass does not hide: the last bucket's, and what the earlier
    buckets' takes beyond the backward."""
    early = ring_allreduce_s(model.grad_bytes - model.last_bucket_bytes, gpus, link)
    return ring_allreduce_s(model.last_bucket_bytes, gpus, link) + max(0.0, early - backward_s)


def step_s(
    model: ModelFacts, batch: int, gpus: int, link: Link, device: Device, host: bool = True
) -> float:
    """One optimizer step at `batch` samples per GPU; `host=False` models a step whose host
    work is gone (CUDA graphs), so only the GPU's time counts."""
    compute = gpu_compute_s(model, batch, device)
    gpu = compute + exposed_allreduce_s(model, gpus, link, BACKWARD_SHARE * compute)
    if not host:
        return gpu
    return model.host_step_s + gpu if model.host_syncs else max(model.host_step_s, gpu)


@dataclass(frozen=True)
class Row:
    gpus: int
    link: str
    per_gpu_batch: int  # at the fixed global batch
    fixed_global_step_s: float
    fixed_global_speedup: float
    no_host_step_s: float
    no_host_speedup: float
    global_batch: int  # at the fixed per-GPU batch
    steps_per_epoch: int
    fixed_per_gpu_step_s: float
    fixed_per_gpu_speedup: float  # samples/s against one GPU at the per-GPU batch
    same_batch_speedup: float  # samples/s against one GPU stepping with the same global batch


def scaling_rows(
    model: ModelFacts,
    network: Link = NET_200,
    device: Device = H200,
    gpu_counts: Sequence[int] = GPU_COUNTS,
    global_batch: int = GLOBAL_BATCH,
) -> list[Row]:
    """One row per GPU count: the step at a fixed global batch (per-GPU batch G / n), with and
    without the host's per-step time, and at a fixed per-GPU batch G (global batch G x n),
    against one GPU at batch G and against one GPU at that global batch."""

    def step(batch: int, gpus: int, host: bool = True) -> float:
        return step_s(model, batch, gpus, link_for(gpus, network), device, host)

    one, one_no_host = step(global_batch, 1), step(global_batch, 1, host=False)
    rows = []
    for n in gpu_counts:
        link = link_for(n, network)
        per_gpu = global_batch // n
        fixed_global, no_host, fixed_per_gpu = (
            step(per_gpu, n), step(per_gpu, n, host=False), step(global_batch, n)
        )  # fmt: skip
        rows.append(
            Row(
                gpus=n,
                link=link.name if n > 1 else "-",
                per_gpu_batch=per_gpu,
                fixed_global_step_s=fixed_global,
                fixed_global_speedup=one / fixed_global,
                no_host_step_s=no_host,
                no_host_speedup=one_no_host / no_host,
                global_batch=global_batch * n,
                steps_per_epoch=max(1, TRAIN_SAMPLES // (global_batch * n)),
                fixed_per_gpu_step_s=fixed_per_gpu,
                fixed_per_gpu_speedup=n * one / fixed_per_gpu,
                same_batch_speedup=step(global_batch * n, 1) / fixed_per_gpu,
            )
        )
    return rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def allreduce_table(models: Sequence[ModelFacts], gpu_counts: Sequence[int] = GPU_COUNTS) -> str:
    """Markdown: the gradient all-reduce in ms per model, GPU count and link."""
    links = (NVLINK, NVLINK_FAST, NET_200, NET_400)
    head = ["GPUs"] + [f"{m.name} {k.name}" for m in models for k in links]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in gpu_counts:
        cells = [
            _ms(ring_allreduce_s(m.grad_bytes, n, k))
            if n <= GPUS_PER_NODE or k not in (NVLINK, NVLINK_FAST)
            else "-"
            for m in models
            for k in links
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_table(rows: Sequence[Row]) -> str:
    """Markdown: the scaling rows, times in ms."""
    head = (
        "GPUs | link | per-GPU batch at G=128 | step ms (today) | speedup | "
        "step ms (no host time) | speedup | global batch at 128/GPU | steps/epoch | step ms | "
        "samples/s vs 1 GPU at 128 | vs 1 GPU at this global batch"
    )
    lines = [f"| {head} |", "|" + "---|" * (head.count("|") + 1)]
    for r in rows:
        cells = (
            r.gpus, r.link, r.per_gpu_batch, _ms(r.fixed_global_step_s),
            f"{r.fixed_global_speedup:.2f}x", _ms(r.no_host_step_s), f"{r.no_host_speedup:.2f}x",
            f"{r.global_batch:,}", r.steps_per_epoch, _ms(r.fixed_per_gpu_step_s),
            f"{r.fixed_per_gpu_speedup:.1f}x", f"{r.same_batch_speedup:.2f}x",
        )  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    print(allreduce_table((REFERENCE, LEAN_SKIPBLANK)))
    for model in (REFERENCE, LEAN_SKIPBLANK):
        for network in (NET_200, NET_400):
            print(f"\n{model.name}, beyond one node over {network.name}:\n")
            print(step_table(scaling_rows(model, network)))


if __name__ == "__main__":
    main()
