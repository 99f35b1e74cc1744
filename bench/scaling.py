"""Scaling inputs measured here: the step's compute, the gradient bytes and their all-reduce.

    .venv/bin/python -m bench.scaling [--model reference] [--batch-size 128] [--rounds 5]
        [--steps 2] [--repeats 20] [--quick] [--json-out bench/results/scaling_cpu.json]

In one run, on this machine's CPU (the inputs of bench.scaling_model, which models GPUs):
- seqtrain's training step (`train_step`: forward, backward, optimizer) at batch B, at B/2,
  and at B as 2 accumulated micro-batches of B/2 (--micro-batch-size; the first pass under
  `no_sync`, a no-op in one process), in interleaved rounds (each round times `--steps` steps
  of each, after an untimed one); the ratios to the step at B are taken within a round and
  their medians over rounds reported, because the machine is shared and its load changes from
  second to second;
- the gradient bytes: parameters x their dtype's size;
- DDP's gradient buckets after its rebuild (2 gloo processes, a few backward passes): the bytes
  of the last bucket, which cannot overlap the backward pass;
- a gloo all-reduce of a flat float32 buffer of the gradient bytes over 1 and over 2 spawned
  processes on loopback (one thread each), median of `--repeats` after a warm-up, and its ratio
  to the step at batch B.
`--quick` measures the tiny model with few repeats (the smoke test). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from bench.emit import emit_measured
from bench.stores import free_port
from seqtrain.config import ModelConfig, RunConfig, TrainConfig
from seqtrain.data.stream import images_to_float
from seqtrain.distributed import make_accelerator
from seqtrain.models import build_model, model_names
from seqtrain.step import build_model_and_optimizer, train_step

Batch = tuple[torch.Tensor, torch.Tensor]
DDP_WARMUP_STEPS = 3  # DDP rebuilds its buckets in gradient-ready order after the first one


def random_batch(batch_size: int) -> Batch:
    """uint8 images and labels as the shards hold them (speed does not depend on the content);
    sequences of 3 digits, so a skip-blank model computes its whole width."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 1, 28, 84), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 10, (batch_size, 3), generator=g)


def step_contenders(model_name: str, batch_size: int, run_dir: Path) -> dict[str, Callable]:
    """Name -> one optimizer step of seqtrain's training step, fp32 on the CPU."""
    cfg = RunConfig(model=ModelConfig(model=model_name), train=TrainConfig(cpu=True))
    cfg.log.wandb_mode = "disabled"
    accelerator = make_accelerator(cfg, run_dir)
    model, optimizer = build_model_and_optimizer(cfg, accelerator)
    full, half = random_batch(batch_size), random_batch(batch_size // 2)
    return {
        "step_full": lambda: train_step(accelerator, model, optimizer, full, cfg),
        "step_half": lambda: train_step(accelerator, model, optimizer, half, cfg),
        "step_accumulated": lambda: train_step(
            accelerator, model, optimizer, full, cfg, micro_batches=2
        ),
    }


def timed_rounds(
    contenders: dict[str, Callable],
    rounds: int,
    steps: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list]:
    """Seconds per step of each contender by `clock` (wall time; `time.process_time` counts this
    process's CPU seconds, less moved by other processes on a shared machine), one figure per
    round; each round starts with a different contender and runs an untimed step of each
    before timing it."""
    names = list(contenders)
    seconds: dict[str, list] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            contenders[name]()
            start = clock()
            for _ in range(steps):
                contenders[name]()
            seconds[name].append((clock() - start) / steps)
    return seconds


def ratios(numerators: list[float], denominators: list[float]) -> dict[str, float | list]:
    """Per-round ratios: their median, and their range (how much the load moved them)."""
    each = [n / d for n, d in zip(numerators, denominators, strict=True)]
    return {"median": statistics.median(each), "range": [min(each), max(each)]}


def grad_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def rank_main(rank: int, world_size: int, port: int, args: dict, out: Path) -> None:
    """One spawned gloo process: the all-reduce timings, and DDP's buckets with 2 processes."""
    torch.set_num_threads(1)  # the processes share the machine's cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        buffer = torch.ones(args["grad_bytes"] // 4)
        for _ in range(2):
            dist.all_reduce(buffer)
        seconds = []
        for _ in range(args["repeats"]):
            dist.barrier()  # every rank starts together: the time is the collective's
            start = time.perf_counter()
            dist.all_reduce(buffer)
            seconds.append(time.perf_counter() - start)
        record = {"allreduce_s": statistics.median(seconds)}
        if world_size > 1:
            record["ddp_bucket_bytes"] = ddp_bucket_bytes(args["model"])
        if rank == 0:
            out.write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def ddp_bucket_bytes(model_name: str) -> list[int] | None:
    """DDP's gradient buckets in the order they are reduced, after its rebuild (read from its
    logging data, a private API: None if it lacks them)."""
    torch.manual_seed(0)
    model = DistributedDataParallel(build_model(model_name))
    images, _ = random_batch(2)
    for _ in range(DDP_WARMUP_STEPS):
        model(images_to_float(images)).sum().backward()
    sizes = model._get_ddp_logging_data().get("rebuilt_bucket_sizes")
    return [int(s) for s in str(sizes).split(",")] if sizes else None


def measure_allreduce(world_size: int, args: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        mp.spawn(rank_main, args=(world_size, free_port(), args, out), nprocs=world_size)
        return json.loads(out.read_text())


def measure(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        contenders = step_contenders(args.model, args.batch_size, Path(tmp))
        seconds = timed_rounds(contenders, args.rounds, args.steps)
    nbytes = grad_bytes(build_model(args.model))
    spawned = {"grad_bytes": nbytes, "repeats": args.repeats, "model": args.model}
    one, two = measure_allreduce(1, spawned), measure_allreduce(2, spawned)
    step_full = statistics.median(seconds["step_full"])
    half = ratios(seconds["step_half"], seconds["step_full"])
    accumulated = ratios(seconds["step_accumulated"], seconds["step_full"])
    return {
        "model": args.model,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "step_full_s": step_full,
        "step_half_s": statistics.median(seconds["step_half"]),
        "step_half_over_full": half["median"],
        "step_half_over_full_range": half["range"],
        "step_accumulated_s": statistics.median(seconds["step_accumulated"]),
        "accumulated_over_full": accumulated["median"],
        "accumulated_over_full_range": accumulated["range"],
        "grad_bytes": nbytes,
        "ddp_bucket_bytes": two["ddp_bucket_bytes"],
        "allreduce_repeats": args.repeats,
        "allreduce_1proc_s": one["allreduce_s"],
        "allreduce_2proc_s": two["allreduce_s"],
        "allreduce_2proc_over_step_full": two["allreduce_s"] / step_full,
        "allreduce_2proc_gb_per_s": nbytes / two["allreduce_s"] / 1e9,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reference", choices=model_names())
    parser.add_argument("--batch-size", type=int, default=128, help="B; also measured at B/2")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the steps")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per contender, round")
    parser.add_argument("--repeats", type=int, default=20, help="timed all-reduces per size")
    parser.add_argument("--quick", action="store_true", help="tiny model, few repeats (a smoke)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON line here")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.batch_size, args.rounds, args.steps, args.repeats = "tiny", 8, 2, 1, 3

    emit_measured("scaling", argv, lambda: measure(args), args.json_out)


if __name__ == "__main__":
    main()
