"""Skip-blank paths on this machine: the static one (every slot through the CNN, masked
BatchNorm) against the dynamic one (the CNN on the inked slots only).

    .venv/bin/python -m bench.skip_blank [--model slotnet_narrow_skipblank] [--batch-size 64]
        [--mixed-precision auto] [--threads 1] [--rounds 5] [--steps 3] [--quick]
        [--json-out bench/results/skip_blank_cpu.json]

In one run, in interleaved rounds (`bench.scaling.timed_rounds`: the machine is shared, so
ratios are taken within a round and their median over rounds reported), timed by the wall clock
and then by the CPU time of the thread that runs it (`*_cpu_time`; torch on `--threads`
threads, default 1, so that thread does all the work): seqtrain's training step
(`train_step`: forward, backward, Adam) and an eval forward (no grad, as `evaluate` runs it) of
one model, each on both paths (`use_static_shapes`), on batches of sequences of 1-3 digits drawn
uniformly (a third of the slots blank, as the generator draws them); the calls cycle through
`BATCHES` batches, so the dynamic path's CNN batch changes from call to call as in training.
The ratio static/dynamic decides `auto_static_shapes` on the CPU: above 1, the dynamic path
stays there. `--quick` runs 2 short rounds at batch 8 (the smoke test). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.emit import emit_measured
from bench.scaling import ratios, timed_rounds
from seqtrain.config import ModelConfig, RunConfig, TrainConfig
from seqtrain.distributed import make_accelerator, resolved_precision, to_device
from seqtrain.models import model_names
from seqtrain.models.slotnet import use_static_shapes
from seqtrain.step import build_model_and_optimizer, train_step

PATHS = {"dynamic": False, "static": True}
BATCHES = 8


def sequences_batch(batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images of 1-3 digits (noise where digits are, black elsewhere) and labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 4, (batch_size,), generator=g)
    images = torch.randint(1, 256, (batch_size, 1, 28, 84), dtype=torch.uint8, generator=g)
    columns = torch.arange(84)
    images[(columns[None, :] >= 28 * lengths[:, None])[:, None, None, :].expand_as(images)] = 0
    labels = torch.randint(0, 10, (batch_size, 3), generator=g)
    labels[torch.arange(3)[None, :] >= lengths[:, None]] = 10
    return images, labels


def contenders(args: argparse.Namespace, run_dir: Path) -> tuple[dict[str, Callable], RunConfig]:
    """Name -> one call: `train_<path>` a training step, `eval_<path>` an eval forward."""
    cfg = RunConfig(
        model=ModelConfig(model=args.model),
        train=TrainConfig(mixed_precision=args.mixed_precision, cpu=True),
    )
    cfg.log.wandb_mode = "disabled"
    accelerator = make_accelerator(cfg, run_dir)
    model, optimizer = build_model_and_optimizer(cfg, accelerator)
    batches = [sequences_batch(args.batch_size, seed) for seed in range(BATCHES)]
    images = [to_device(*b, accelerator.device, cfg.model.channels_last)[0] for b in batches]
    calls = itertools.count()

    def train(static: bool) -> None:
        use_static_shapes(model, static)
        model.train()
        train_step(accelerator, model, optimizer, batches[next(calls) % BATCHES], cfg)

    @torch.no_grad()
    def evaluate(static: bool) -> None:
        use_static_shapes(model, static)
        model.eval()
        with accelerator.autocast():
            model(images[next(calls) % BATCHES])

    named = {}
    for path, static in PATHS.items():
        named[f"train_{path}"] = lambda static=static: train(static)
        named[f"eval_{path}"] = lambda static=static: evaluate(static)
    return named, cfg


# Wall time, and the CPU seconds of the thread that runs the step (`--threads 1`, the default:
# then it does all the work): what a path costs, barely moved by the other processes of a shared
# machine, where wall-clock rounds of 2 threads varied 6-fold under a load average of 10.
CLOCKS = {"": time.perf_counter, "_cpu_time": time.thread_time}


def measure(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        calls, cfg = contenders(args, Path(tmp))
        seconds = {
            suffix: timed_rounds(calls, args.rounds, args.steps, clock)
            for suffix, clock in CLOCKS.items()
        }
    record: dict = {"precision": resolved_precision(cfg)}
    for suffix, kind in itertools.product(CLOCKS, ("train", "eval")):
        static, dynamic = seconds[suffix][f"{kind}_static"], seconds[suffix][f"{kind}_dynamic"]
        ratio = ratios(static, dynamic)
        record[f"{kind}_dynamic_s{suffix}"] = statistics.median(dynamic)
        record[f"{kind}_static_s{suffix}"] = statistics.median(static)
        record[f"{kind}_static_over_dynamic{suffix}"] = ratio["median"]
        record[f"{kind}_static_over_dynamic{suffix}_range"] = ratio["range"]
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    skipping = [name for name in model_names() if name.endswith("_skipblank")]
    parser.add_argument("--model", default="slotnet_narrow_skipblank", choices=skipping)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--mixed-precision", default="auto", choices=["auto", "no", "bf16"], help="as in training"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed calls per contender, round")
    parser.add_argument("--quick", action="store_true", help="2 short rounds at batch 8")
    parser.add_argument("--json-out", type=Path, help="also write the JSON line here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.rounds, args.steps = 8, 2, 1

    torch.set_num_threads(args.threads)
    emit_measured("skip_blank", argv, lambda: {
        "model": args.model, "batch_size": args.batch_size, "rounds": args.rounds,
        "steps_per_round": args.steps, **measure(args),
    }, args.json_out)  # fmt: skip


if __name__ == "__main__":
    main()
