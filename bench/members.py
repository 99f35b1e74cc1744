"""`--members N` on this machine: the stacked model's training step against N runs' steps one
after another (what training the N seeds as separate runs costs per step).

    .venv/bin/python -m bench.members [--model slotnet_narrow_skipblank] [--members 6]
        [--batch-size 64] [--rounds 5] [--steps 2] [--quick]
        [--json-out bench/results/members_cpu.json]

In one run, in interleaved rounds (`bench.scaling.timed_rounds`; ratios within a round, their
median over rounds): `stacked`, seqtrain's step (`train_step`: forward, backward, Adam) of the
--members model as training builds it here (on CPU: one member after another), on every
member's batch interleaved; `vectorized`, the same model run through vmap (the GPU form, here
to measure what it costs on CPU); `separate`, N models of their own, each a step on its own
batch. Start-up, loaders and evaluation are left out: N runs pay them N times, so the step
ratio is the stacked run's worst case. `--quick`: 2 short rounds at batch 8, 2 members.

With `--shards DIR`, whole processes too, start-up, loading, val and test included: one
`seqtrain train --members N` against N `seqtrain train --seed i` one after another (seeds 0..N-1,
one epoch each, W&B off), alternating, `--rounds` times (`runs_over_separate`: its per-round
ratios).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.emit import emit_measured
from bench.scaling import ratios, timed_rounds
from bench.skip_blank import sequences_batch
from seqtrain.config import ModelConfig, RunConfig, TrainConfig
from seqtrain.distributed import make_accelerator
from seqtrain.models import model_names
from seqtrain.models.slotnet import use_static_shapes
from seqtrain.step import build_model_and_optimizer, train_step


def contenders(args: argparse.Namespace, run_dir: Path) -> dict[str, Callable]:
    def config(members: int, seed: int = 0) -> RunConfig:
        cfg = RunConfig(
            model=ModelConfig(model=args.model),
            train=TrainConfig(mixed_precision="no", cpu=True, members=members, seed=seed),
        )
        cfg.log.wandb_mode = "disabled"
        return cfg

    stacked_cfg = config(args.members)
    accelerator = make_accelerator(stacked_cfg, run_dir)
    batches = [sequences_batch(args.batch_size, seed) for seed in range(args.members)]
    interleaved = [torch.stack(field, 1).flatten(0, 1) for field in zip(*batches, strict=True)]
    stacked, stacked_optimizer = build_model_and_optimizer(stacked_cfg, accelerator)
    vectorized, vectorized_optimizer = build_model_and_optimizer(stacked_cfg, accelerator)
    vectorized.vectorized = True
    use_static_shapes(vectorized, True)
    singles = [
        build_model_and_optimizer(config(1, seed), accelerator) for seed in range(args.members)
    ]

    def separate() -> None:
        for (model, optimizer), batch in zip(singles, batches, strict=True):
            train_step(accelerator, model, optimizer, batch, config(1))

    return {
        "stacked": lambda: train_step(
            accelerator, stacked, stacked_optimizer, interleaved, stacked_cfg
        ),
        "vectorized": lambda: train_step(
            accelerator, vectorized, vectorized_optimizer, interleaved, stacked_cfg
        ),
        "separate": separate,
    }


def measure(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        seconds = timed_rounds(contenders(args, Path(tmp)), args.rounds, args.steps)
    record: dict = {f"{name}_s": statistics.median(values) for name, values in seconds.items()}
    for name in ("stacked", "vectorized"):
        ratio = ratios(seconds[name], seconds["separate"])
        record[f"{name}_over_separate"] = ratio["median"]
        record[f"{name}_over_separate_range"] = ratio["range"]
    return record


def whole_runs(args: argparse.Namespace, shards: Path) -> dict:
    """Seconds of one --members process against the N single runs, per round, and ratios."""
    seconds: dict[str, list[float]] = {"runs_members": [], "runs_separate": []}
    with tempfile.TemporaryDirectory() as out:
        common = [
            sys.executable, "-m", "seqtrain", "train", "--shards", str(shards),
            "--model", args.model, "--epochs", "1", "--batch-size", str(args.batch_size),
            "--num-workers", "0", "--wandb-mode", "disabled", "--output-dir", out, "--overwrite",
        ]  # fmt: skip
        together = [[*common, "--run-name", "members", "--members", str(args.members)]]
        apart = [[*common, "--run-name", f"seed{i}", "--seed", str(i)] for i in range(args.members)]
        for r in range(args.rounds):
            order = [("runs_members", together), ("runs_separate", apart)]
            for name, commands in order[r % 2 :] + order[: r % 2]:
                start = time.perf_counter()
                for command in commands:
                    subprocess.run(command, check=True, capture_output=True)
                seconds[name].append(time.perf_counter() - start)
    ratio = ratios(seconds["runs_members"], seconds["runs_separate"])
    return {
        "runs_members_s": seconds["runs_members"],
        "runs_separate_s": seconds["runs_separate"],
        "runs_over_separate": ratio["median"],
        "runs_over_separate_range": ratio["range"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="slotnet_narrow_skipblank", choices=model_names())
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64, help="per member")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=2, help="timed calls per contender, round")
    parser.add_argument("--quick", action="store_true", help="2 short rounds, batch 8, 2 members")
    parser.add_argument("--shards", type=Path, help="also time whole runs on these shards")
    parser.add_argument("--json-out", type=Path, help="also write the JSON line here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.rounds, args.steps, args.members = 8, 2, 1, 2

    emit_measured("members", argv, lambda: {
        "model": args.model, "members": args.members, "batch_size": args.batch_size,
        "rounds": args.rounds, "steps_per_round": args.steps, **measure(args),
        **(whole_runs(args, args.shards) if args.shards else {}),
    }, args.json_out)  # fmt: skip


if __name__ == "__main__":
    main()
