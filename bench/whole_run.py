"""A whole `seqtrain train` process against the seed script on the same samples, start-up included.

    .venv/bin/python -m bench.whole_run --mnist-dir ../shared/mnist [--train-size 7680]
        [--rounds 3] [--baseline ../shared/bench/seed_baseline.py] [--json-out FILE]

`bench.train_throughput` times the training step alone; a user waits for the whole process:
interpreter and imports, data set-up, the epoch, validation, test, checkpoints and export. Both
sides train the reference network for one epoch of `--train-size` samples at batch 128 and
score `--eval-size` val and test sequences: the seed script stitches its samples on the fly, as
its users run it; seqtrain reads shards this command generates once beforehand (untimed: they
are made offline, once for many runs). The two processes alternate over `--rounds` rounds (each
round starts with the other one); each round's ratio compares runs a minute apart. Per side:
wall seconds, the CPU seconds of the process and its children (less moved by other work on a
shared machine), the epoch's own seconds as the process reports them, and the rest (start-up,
evaluation, files) as wall minus epoch. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.emit import cpu_name, emit_result
from bench.scaling import ratios

REPO = Path(__file__).resolve().parents[1]
BATCH = 128


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_process(argv: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds (the process and its descendants) of one run, and its stdout."""
    cpu, start = children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench.whole_run: {Path(argv[1]).name} exited {done.returncode}: "
                 f"{(done.stdout + done.stderr)[-800:]}")  # fmt: skip
    return wall, children_cpu_seconds() - cpu, done.stdout


def generate(mnist_dir: Path, out: Path, train_size: int, eval_size: int) -> None:
    argv = [sys.executable, "-m", "data_gen", "generate", "--mnist-dir", str(mnist_dir),
            "--out", str(out), "--seed", "0", "--epochs", "1", "--train-size", str(train_size),
            "--val-size", str(eval_size), "--test-size", str(eval_size)]  # fmt: skip
    subprocess.run(argv, cwd=REPO, check=True, capture_output=True)


def seed_run(args: argparse.Namespace) -> dict:
    wall, cpu, stdout = timed_process(
        [sys.executable, str(args.baseline), str(args.mnist_dir), "--epochs", "1",
         "--train-per-epoch", str(args.train_size), "--batch-size", str(BATCH),
         "--val-n", str(args.eval_size), "--test-n", str(args.eval_size)]
    )  # fmt: skip
    epoch = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])
    return {"wall": wall, "cpu": cpu, "epoch": epoch["seconds"]}


def seqtrain_run(args: argparse.Namespace, shards: Path, runs: Path, name: str) -> dict:
    wall, cpu, _ = timed_process(
        [sys.executable, "-m", "seqtrain", "train", "--shards", str(shards), "--model",
         "reference", "--epochs", "1", "--batch-size", str(BATCH), "--wandb-mode", "disabled",
         "--output-dir", str(runs), "--run-name", name, *args.seqtrain_flags]
    )  # fmt: skip
    record = json.loads((runs / name / "metrics.jsonl").read_text().splitlines()[-1])
    return {"wall": wall, "cpu": cpu, "epoch": record["epoch_seconds"]}


def summary(runs: list[dict]) -> dict:
    return {
        key: round(statistics.median(r[key] for r in runs), 2) for key in ("wall", "cpu", "epoch")
    } | {"rest": round(statistics.median(r["wall"] - r["epoch"] for r in runs), 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-dir", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, default=REPO.parent / "shared" / "bench" /
                        "seed_baseline.py")  # fmt: skip
    parser.add_argument("--train-size", type=int, default=7680)
    parser.add_argument("--eval-size", type=int, default=1000, help="val and test sequences")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--seqtrain-flags",
        type=shlex.split,
        default=[],
        help="more `seqtrain train` flags in one string: '--num-workers 0'",
    )

    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if not args.baseline.is_file():
        parser.error(f"no seed script at {args.baseline} (pass --baseline)")
    with tempfile.TemporaryDirectory(prefix="whole_run_") as tmp:
        shards = Path(tmp) / "shards"
        generate(args.mnist_dir, shards, args.train_size, args.eval_size)
        sides: dict[str, list[dict]] = {"seed": [], "seqtrain": []}
        for r in range(args.rounds):
            order = ["seed", "seqtrain"] if r % 2 == 0 else ["seqtrain", "seed"]
            for side in order:
                run = (seed_run(args) if side == "seed"
                       else seqtrain_run(args, shards, Path(tmp) / "runs", f"r{r}"))  # fmt: skip
                sides[side].append(run)
                print(f"round {r} {side}: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.items()),
                      file=sys.stderr)  # fmt: skip
    seed, ours = sides["seed"], sides["seqtrain"]
    emit_result(
        {
            "bench": "whole_run",
            "cpu": cpu_name(),
            "train_size": args.train_size,
            "eval_size": args.eval_size,
            "seqtrain_flags": args.seqtrain_flags,
            "seed": summary(seed),
            "seqtrain": summary(ours),
            # > 1: seqtrain is faster (the seed's seconds over seqtrain's, per round).
            "speedup_wall": ratios([s["wall"] for s in seed], [o["wall"] for o in ours]),
            "speedup_cpu": ratios([s["cpu"] for s in seed], [o["cpu"] for o in ours]),
            "speedup_epoch": ratios([s["epoch"] for s in seed], [o["epoch"] for o in ours]),
        },
        args.json_out,
    )


if __name__ == "__main__":
    main()
