"""Trainer throughput: samples/s of seqtrain's training step against the seed baseline's loop.

    .venv/bin/python -m bench.train_throughput [--rounds 5] [--steps 3] [--max-seconds 170]
        [--batch-size 128] [--baseline ../shared/bench/seed_baseline.py] [--no-compile]
        [--model reference] [--json-out bench/results/train_throughput_cpu.json]

Same network (the `reference` model is the seed's SeedNet), batch and data in one process:
the seed's loop (fp32, float batches from its `stitch`) and seqtrain's `train_step` through
Accelerate (uint8 batches converted on the device, as in training) in fp32, fp32 +
channels_last, bf16 and channels_last + torch.compile (on a GPU also bf16 + channels_last +
compile; compilation happens in the untimed warm-up). Data loading is excluded on both sides
(`python -m bench.loader_throughput` measures the loader).

`--model` puts another registered network into seqtrain's contenders (the seed's loop keeps
its own): then the ratios say how fast that model's training step runs against the seed's
loop, and the fp32/bf16 contenders how much the precision gives it on this machine. The batch
holds sequences of 1-3 digits as the seed draws them, so a skip-blank model skips what it
would in training.

On a shared machine the load changes from second to second, so contenders measured one after
another compare different machines. Here all contenders are built up front and measured in
interleaved rounds: each round times `--steps` steps of every contender (after `--round-warmup`
untimed ones), starting with a different contender each round. Each contender's ratio to the seed is
taken within a round (both saw about the same load); the median over rounds is the figure to
quote, with the best-of-rounds samples/s beside it. Under heavy load fewer rounds run (at least
3) so the whole stays within `--max-seconds`. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F  # noqa: N812
from accelerate.state import AcceleratorState
from torch import nn

from bench.emit import cpu_name, emit_result
from seqtrain.config import ModelConfig, RunConfig, TrainConfig
from seqtrain.distributed import cpu_has_native_bf16, make_accelerator, to_device
from seqtrain.models import model_names
from seqtrain.step import build_model_and_optimizer, train_step

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = REPO.parent / "shared" / "bench" / "seed_baseline.py"
SEED = "seed_fp32"
MIN_ROUNDS = 3
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Contender:
    name: str
    step: Callable[[], torch.Tensor]
    compute_dtype: Callable[[], torch.dtype]  # what the first conv computes in: precision applied
    expected_dtype: torch.dtype
    rates: list[float] = field(default_factory=list)  # samples/s, one per round


def load_baseline(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("seed_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first_conv_dtype(model: nn.Module, forward: Callable[[], object]) -> torch.dtype:
    """The dtype the first convolution computes in during `forward()` (the model's own output is
    not telling: Accelerate converts autocast outputs back to fp32)."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    seen = []
    hook = conv.register_forward_hook(lambda _module, _args, out: seen.append(out.dtype))
    try:
        with torch.no_grad():
            forward()
    finally:
        hook.remove()
    return seen[0]


def seed_batch(seed: ModuleType, batch_size: int) -> Batch:
    """A stitched batch the seed's way, from random 'digits' (speed does not depend on them)."""
    g = torch.Generator().manual_seed(0)
    digits = torch.randint(0, 256, (1000, 28, 28), dtype=torch.uint8, generator=g)
    classes = torch.randint(0, 10, (1000,), generator=g)
    return seed.stitch(digits, classes, batch_size, g, False)


def seed_contender(seed: ModuleType, batch: Batch) -> Contender:
    torch.manual_seed(0)
    model = seed.SeedNet()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = batch

    def step() -> torch.Tensor:  # seed_baseline.py's inner loop, verbatim
        out = model(x)
        loss = F.cross_entropy(out.reshape(-1, 11), y.reshape(-1), reduction="sum") / out.shape[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return Contender(
        SEED, step, lambda: first_conv_dtype(model, lambda: model(x[:2])), torch.float32
    )


def trainer_contender(
    name: str,
    batch: Batch,
    run_dir: Path,
    cpu: bool,
    channels_last: bool,
    precision: str,
    compile_model: bool,
    model_name: str = "reference",
) -> Contender:
    images = (batch[0] * 255).round().to(torch.uint8)  # what the shards hold
    cfg = RunConfig(
        model=ModelConfig(model=model_name, channels_last=channels_last, compile=compile_model),
        train=TrainConfig(mixed_precision=precision, cpu=cpu),
    )
    cfg.log.wandb_mode = "disabled"
    # Accelerate's state is a process-wide singleton fixed at the first Accelerator; reset it so
    # this one gets its own precision. `prepare` has already wrapped the earlier contenders'
    # forward in their autocast; `compute_dtype` checks, after the rounds, that this held.
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = make_accelerator(cfg, run_dir)
    model, optimizer = build_model_and_optimizer(cfg, accelerator)

    def step() -> torch.Tensor:
        return train_step(accelerator, model, optimizer, (images, batch[1]), cfg)

    def compute_dtype() -> torch.dtype:
        x, _ = to_device(images[:2], batch[1][:2], accelerator.device, channels_last)
        return first_conv_dtype(model, lambda: model(x))

    expected = torch.bfloat16 if precision == "bf16" else torch.float32
    return Contender(name, step, compute_dtype, expected)


def trainer_options(args: argparse.Namespace) -> dict[str, tuple[bool, str, bool]]:
    """Contender name -> (channels_last, mixed precision, torch.compile)."""
    options = {
        "seqtrain_fp32": (False, "no", False),
        "seqtrain_channels_last": (True, "no", False),
        "seqtrain_bf16": (False, "bf16", False),
        # what `--mixed-precision auto` trains with on a CPU or GPU with native bf16
        "seqtrain_bf16_channels_last": (True, "bf16", False),
    }
    if args.compile:
        options["seqtrain_channels_last_compile"] = (True, "no", True)
        if torch.cuda.is_available() and not args.cpu:
            options["seqtrain_bf16_channels_last_compile"] = (True, "bf16", True)
    return options


def timed_rate(step: Callable[[], torch.Tensor], steps: int, batch_size: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()  # waits for queued device work before the clock stops
    return steps * batch_size / (time.perf_counter() - start)


def run_rounds(contenders: list[Contender], args: argparse.Namespace, deadline: float) -> int:
    """Interleaved rounds until `--rounds` or until the next would pass `deadline` (but at least
    MIN_ROUNDS); returns the number run."""
    for contender in contenders:
        for _ in range(args.warmup):
            contender.step()
    for r in range(args.rounds):
        started = time.perf_counter()
        for contender in contenders[r % len(contenders) :] + contenders[: r % len(contenders)]:
            for _ in range(args.round_warmup):
                contender.step()
            contender.rates.append(timed_rate(contender.step, args.steps, args.batch_size))
        now = time.perf_counter()
        if r + 1 >= MIN_ROUNDS and now + (now - started) > deadline:
            return r + 1
    return args.rounds


def summarize(contenders: list[Contender]) -> dict[str, dict[str, float]]:
    seed_rates = contenders[0].rates
    summary = {}
    for c in contenders:
        ratios = [rate / base for rate, base in zip(c.rates, seed_rates, strict=True)]
        summary[c.name] = {
            "best_samples_per_s": round(max(c.rates), 1),
            "median_samples_per_s": round(statistics.median(c.rates), 1),
            "median_ratio": round(statistics.median(ratios), 3),
            "min_ratio": round(min(ratios), 3),
            "max_ratio": round(max(ratios), 3),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per contender and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender, once")
    parser.add_argument(
        "--round-warmup", type=int, default=1, help="untimed steps per contender before each round"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=170,
        help=f"start no round that would end past this (at least {MIN_ROUNDS} rounds run)",
    )
    parser.add_argument("--cpu", action="store_true", help="measure on CPU even with a GPU")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add torch.compile contenders (compiled during the untimed warm-up)",
    )
    parser.add_argument(
        "--model",
        default="reference",
        choices=model_names(),
        help="the network seqtrain's contenders train (the seed's loop trains its own)",
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON line here")
    args = parser.parse_args()

    started = time.perf_counter()
    seed = load_baseline(args.baseline)
    batch = seed_batch(seed, args.batch_size)
    with ExitStack() as stack:
        run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        contenders = [seed_contender(seed, batch)] + [
            trainer_contender(name, batch, run_dir, args.cpu, *options, args.model)
            for name, options in trainer_options(args).items()
        ]
        rounds = run_rounds(contenders, args, started + args.max_seconds)
        for c in contenders:
            dtype = c.compute_dtype()
            if dtype != c.expected_dtype:
                raise SystemExit(f"{c.name}: computes in {dtype}, expected {c.expected_dtype}")
    summary = summarize(contenders)

    print(
        f"{'loop':34s} {'best/s':>8s} {'median/s':>9s} {'median ratio':>13s} {'ratio range':>12s}"
    )
    for name, s in summary.items():
        spread = f"{s['min_ratio']:.2f}-{s['max_ratio']:.2f}"
        print(
            f"{name:34s} {s['best_samples_per_s']:8.1f} {s['median_samples_per_s']:9.1f} "
            f"{s['median_ratio']:13.2f} {spread:>12s}"
        )
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    record = {
        "bench": "train_throughput",
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "cpu_threads": torch.get_num_threads(),
        "model": args.model,
        "batch_size": args.batch_size,
        "rounds": rounds,
        "steps_per_round": args.steps,
        "seconds": round(time.perf_counter() - started, 1),
        "best_samples_per_s": {k: s["best_samples_per_s"] for k, s in summary.items()},
        **{f"{k}_vs_seed": s["median_ratio"] for k, s in summary.items() if k != SEED},
        "ratio_range_vs_seed": {
            k: [s["min_ratio"], s["max_ratio"]] for k, s in summary.items() if k != SEED
        },
    }
    emit_result(record, args.json_out)


if __name__ == "__main__":
    main()
