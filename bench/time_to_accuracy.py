"""Time to accuracy: seconds and epochs for each recipe to reach a target val exact match.

    .venv/bin/python bench/time_to_accuracy.py --mnist-dir ../shared/mnist
        [--train-size 6000] [--val-size 1000] [--test-size 2000] [--epochs 5]
        [--target 0.95] [--budget-s 420] [--recipes reference slotnet_onecycle]
        [--shards DIR] [--work-dir DIR] [--json-out bench/results/time_to_accuracy.json]

Generates one small shard set (`seqtrain-data generate`; or reuses --shards), then trains each
recipe on it with `seqtrain train` in its own subprocess (the real CLI, fresh process state),
stopped after --budget-s seconds. From the run's metrics.jsonl: the first epoch whose val exact
match reaches --target, and the training+validation seconds up to it (the sum of
`epoch_seconds`, so start-up, test evaluation and export are excluded); the wall time of the
whole process beside it. Prints a table, then one JSON line (also written to --json-out).
On a GPU machine the same command runs unchanged (the trainer's defaults, bf16 autocast and
channels-last, apply there).

Long runs: with --work-dir the shards and run folders persist there and each recipe trains with
`--resume auto`, so rerunning the same command after its budget (or a crash) continues every
unfinished recipe from its last checkpoint; a finished recipe's results are read back as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from emit import emit_result

from seqtrain.flops import flops_per_sample
from seqtrain.models import build_model

REPO = Path(__file__).resolve().parents[1]
SEED_BASELINE = "seed_baseline"  # ../shared/bench/seed_baseline.py, run as it is

# name -> (model, extra `seqtrain train` flags); `reference` is the reference recipe, unchanged.
RECIPES: dict[str, tuple[str, list[str]]] = {
    "reference": ("reference", []),
    "slotnet_onecycle": ("slotnet", ["--sched", "onecycle", "--lr", "3e-3"]),
    "slotnet_plateau": ("slotnet", []),
    "reference_onecycle": ("reference", ["--sched", "onecycle"]),
    "slotnet_deep_onecycle": ("slotnet_deep", ["--sched", "onecycle", "--lr", "3e-3"]),
    # bf16 autocast against fp32 (`auto` picks bf16 on a CPU with native bf16), two seeds each
    # to see the seed-to-seed noise; `tiny` where bf16 is emulated and too slow for the reference
    **{
        f"{model}_{precision}_seed{seed}": (
            model,
            [*model_flags, "--mixed-precision", flag, "--seed", str(seed)],
        )
        for model, model_flags in (("reference", []), ("tiny", ["--lr", "1e-2"]))
        for precision, flag in (("fp32", "no"), ("bf16", "bf16"))
        for seed in (0, 1)
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mnist-dir", type=Path, default=REPO.parent / "shared" / "mnist")
    p.add_argument("--shards", type=Path, help="reuse this shard folder instead of generating")
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--work-dir", type=Path, help="keep shards, runs here; resume")
    p.add_argument("--budget-s", type=float, default=420.0, help="wall seconds per recipe")
    p.add_argument("--recipes", nargs="+", default=[SEED_BASELINE, "reference", "slotnet_onecycle"])
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="pass --channels-last / --no-channels-last (default: the trainer's default, on)",
    )
    p.add_argument(
        "--baseline", type=Path, default=REPO.parent / "shared" / "bench" / "seed_baseline.py"
    )
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    unknown = set(args.recipes) - {*RECIPES, SEED_BASELINE}
    if unknown:
        p.error(
            f"unknown recipes {sorted(unknown)}; choose from {sorted([*RECIPES, SEED_BASELINE])}"
        )
    if SEED_BASELINE in args.recipes and not args.baseline.is_file():
        p.error(f"--baseline {args.baseline} is not a file")
    return args


def generate(args: argparse.Namespace, out: Path) -> float:
    """Render the shard set; returns its seconds."""
    start = time.perf_counter()
    argv = [
        sys.executable, "-m", "data_gen", "generate",
        "--mnist-dir", str(args.mnist_dir), "--out", str(out),
        "--train-size", str(args.train_size), "--val-size", str(args.val_size),
        "--test-size", str(args.test_size), "--epochs", str(args.epochs), "--shard-size", "500",
    ]  # fmt: skip
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_budgeted(argv: list[str], budget_s: float) -> tuple[bool, float, str]:
    """Run argv, killed after budget_s with its whole process group (loader workers included);
    (finished with exit 0, wall seconds, its stdout)."""
    start = time.perf_counter()
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=budget_s)
            finished = process.returncode == 0
            if not finished:
                print(stderr[-2000:], file=sys.stderr)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, _ = process.communicate()
            finished = False
    return finished, time.perf_counter() - start, stdout


def train_seed_baseline(args: argparse.Namespace) -> dict:
    """The seed-like baseline on the same sizes, MNIST files and augmentation (its own in-memory
    stitching: it reads no shards). It has no val exact match; it prints test exact match after
    every epoch, so its epochs to target are counted on test. Its seconds are cumulative from its
    first step and include its per-epoch stitching and val + test evaluation."""
    argv = [
        sys.executable, str(args.baseline), str(args.mnist_dir), "--epochs", str(args.epochs),
        "--train-per-epoch", str(args.train_size), "--val-n", str(args.val_size),
        "--test-n", str(args.test_size), "--target", "0",
    ]  # fmt: skip
    finished, wall, stdout = run_budgeted(argv, args.budget_s)
    epochs = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    per_epoch = [e["test_exact_match"] for e in epochs]
    reached = next((e for e in epochs if e["test_exact_match"] >= args.target), None)
    return {
        "recipe": SEED_BASELINE,
        "argv": ["python", *argv[1:]],
        "gflop_per_train_sample": flops_per_sample(partial(build_model, "reference")) / 1e9,
        "finished": finished,
        "wall_seconds": wall,
        "epochs_run": len(epochs),
        "target_split": "test",
        "epochs_to_target": reached["epoch"] if reached else None,
        "seconds_to_target": reached["seconds"] if reached else None,
        "exact_match_per_epoch": per_epoch,
        "epoch_seconds": [e["seconds"] for e in epochs],  # cumulative, as the baseline prints
        "test_exact_match": per_epoch[-1] if per_epoch else None,
    }


def train(args: argparse.Namespace, shards: Path, out: Path, name: str) -> dict:
    """One recipe in a subprocess, killed at the budget; its per-epoch and test results."""
    model, extra = RECIPES[name]
    if args.channels_last is not None:
        extra = [*extra, "--channels-last" if args.channels_last else "--no-channels-last"]
    argv = [
        sys.executable, "-m", "seqtrain", "train",
        "--shards", str(shards), "--model", model, "--epochs", str(args.epochs),
        "--num-workers", str(args.num_workers), "--output-dir", str(out), "--run-name", name,
        "--wandb-mode", "disabled", *extra,
    ]  # fmt: skip
    if args.work_dir is not None:
        argv += ["--resume", "auto"]
    run = out / name
    metrics, test = run / "metrics.jsonl", run / "test_metrics.json"
    if args.work_dir is not None and test.exists():
        finished, wall = True, None  # finished by an earlier invocation: read its results back
    else:
        finished, wall, _ = run_budgeted(argv, args.budget_s)
    epochs = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    reached = next((e for e in epochs if e["val_exact_match"] >= args.target), None)
    return {
        "recipe": name,
        "argv": ["seqtrain", *argv[3:]],
        "gflop_per_train_sample": flops_per_sample(partial(build_model, model)) / 1e9,
        "finished": finished,
        "wall_seconds": wall,
        "epochs_run": len(epochs),
        "epochs_to_target": reached["epoch"] if reached else None,
        "seconds_to_target": (
            sum(e["epoch_seconds"] for e in epochs[: reached["epoch"]]) if reached else None
        ),
        "target_split": "val",
        "exact_match_per_epoch": [e["val_exact_match"] for e in epochs],
        "epoch_seconds": [e["epoch_seconds"] for e in epochs],
        "test_exact_match": json.loads(test.read_text())["exact_match"] if test.exists() else None,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        work = args.work_dir or Path(tmp)
        shards, gen_seconds = args.shards, None
        if shards is None:
            shards = work / "shards"
            if not (shards / "manifest.json").exists():
                gen_seconds = generate(args, shards)
        results = [
            train_seed_baseline(args)
            if name == SEED_BASELINE
            else train(args, shards, work / "runs", name)
            for name in args.recipes
        ]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print(
        f"target exact match {args.target} (val; the seed baseline: test); "
        f"{args.train_size} train samples/epoch; {device}"
    )
    print(f"{'recipe':<20} {'GFLOP/smp':>9} {'epochs':>6} {'s to target':>11} "
          f"{'ep. to target':>13} {'best':>8} {'on':>5} {'test':>6} {'wall s':>7}")  # fmt: skip
    for r in results:
        print(
            f"{r['recipe']:<20} {r['gflop_per_train_sample']:>9.3f} {r['epochs_run']:>6} "
            f"{fmt(r['seconds_to_target'], '.1f'):>11} {fmt(r['epochs_to_target'], 'd'):>13} "
            f"{fmt(max(r['exact_match_per_epoch'], default=None), '.4f'):>8} "
            f"{r['target_split']:>5} "
            f"{fmt(r['test_exact_match'], '.4f'):>6} {fmt(r['wall_seconds'], '.1f'):>7}"
        )
    record = {
        "bench": "time_to_accuracy",
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "target": args.target,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "test_size": args.test_size,
        "epochs": args.epochs,
        "budget_s": args.budget_s,
        "generate_seconds": gen_seconds,
        "results": results,
    }
    emit_result(record, args.json_out)


if __name__ == "__main__":
    main()
