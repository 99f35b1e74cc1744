"""Trainer throughput: samples/s of seqtrain's training step against the seed baseline's loop.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--warmup 3] [--batch-size 128]
        [--baseline ../shared/bench/seed_baseline.py]

Same network (the `reference` model is the seed's SeedNet), batch and data in one process:
the seed's loop (fp32, float batches from its `stitch`) and seqtrain's `train_step` through
Accelerate (uint8 batches converted on the device, as in training) in fp32, fp32 +
channels_last and bf16. Each contender gets `--warmup` untimed steps, then `--steps` timed
ones. Data loading is excluded on both sides (bench/loader_throughput.py measures the loader).
Prints a table, then one JSON line with the ratios to the seed loop.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F  # noqa: N812
from accelerate.state import AcceleratorState

from seqtrain.config import ModelConfig, RunConfig, TrainConfig
from seqtrain.distributed import make_accelerator
from seqtrain.train import build_model_and_optimizer, train_step

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = REPO.parent / "shared" / "bench" / "seed_baseline.py"


def load_baseline(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("seed_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_batch(seed: ModuleType, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stitched batch the seed's way, from random 'digits' (speed does not depend on them)."""
    g = torch.Generator().manual_seed(0)
    digits = torch.randint(0, 256, (1000, 28, 28), dtype=torch.uint8, generator=g)
    classes = torch.randint(0, 10, (1000,), generator=g)
    return seed.stitch(digits, classes, batch_size, g, False)


def timed(step: Callable[[], torch.Tensor], steps: int, warmup: int, batch_size: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()  # waits for queued device work before the clock stops
    return steps * batch_size / (time.perf_counter() - start)


def seed_rate(seed: ModuleType, batch, args) -> float:
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

    return timed(step, args.steps, args.warmup, args.batch_size)


def trainer_rate(batch, args, channels_last: bool, precision: str) -> float:
    images = (batch[0] * 255).round().to(torch.uint8)  # what the shards hold
    cfg = RunConfig(
        model=ModelConfig(model="reference", channels_last=channels_last),
        train=TrainConfig(mixed_precision=precision, cpu=args.cpu),
    )
    cfg.log.wandb_mode = "disabled"
    with tempfile.TemporaryDirectory() as run_dir:
        accelerator = make_accelerator(cfg, Path(run_dir))
        model, optimizer = build_model_and_optimizer(cfg, accelerator)
        rate = timed(
            lambda: train_step(accelerator, model, optimizer, (images, batch[1]), cfg),
            args.steps,
            args.warmup,
            args.batch_size,
        )
    # Accelerate's state is a process-wide singleton; the next precision needs a fresh one.
    AcceleratorState._reset_state(reset_partial_state=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender")
    parser.add_argument("--cpu", action="store_true", help="measure on CPU even with a GPU")
    args = parser.parse_args()

    seed = load_baseline(args.baseline)
    batch = seed_batch(seed, args.batch_size)
    rates = {"seed_fp32": seed_rate(seed, batch, args)}
    for name, channels_last, precision in (
        ("seqtrain_fp32", False, "no"),
        ("seqtrain_channels_last", True, "no"),
        ("seqtrain_bf16", False, "bf16"),
    ):
        rates[name] = trainer_rate(batch, args, channels_last, precision)

    base = rates["seed_fp32"]
    print(f"{'loop':26s} {'samples/s':>10s} {'vs seed':>8s}")
    for name, rate in rates.items():
        print(f"{name:26s} {rate:10.1f} {rate / base:8.2f}")
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    ratios = {f"{k}_vs_seed": round(v / base, 3) for k, v in rates.items() if k != "seed_fp32"}
    print(
        json.dumps(
            {
                "bench": "train_throughput",
                "device": device,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "samples_per_s": {k: round(v, 1) for k, v in rates.items()},
                **ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
