"""How long a preempted run takes from the signal to its exit (saved, 75), per model.

The time a cluster gives between its stop signal and SIGKILL is fixed: SLURM's GraceTime
(preemption) or KillWait (scancel, the time limit; 30 s by default), the `--signal=B:USR1@T`
warning's T, and torch's elastic agent waits 30 s for its ranks after passing SIGTERM on. This
measures what seqtrain needs of it: `seqtrain train` with the defaults (batch 128, loader workers,
--preempt-check-every 10, W&B offline) on a small data set it generates, SIGTERM to the whole
process group mid-epoch 2 (as SLURM and shells signal), then the seconds until "preempted:
saved" is printed and until the process has exited, and the checkpoint's size.

    python -m bench.preemption_save --mnist-dir ../shared/mnist --models reference slotnet_deep
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.emit import cpu_name, emit_result

EXIT_PREEMPTED = 75


def generate(mnist_dir: Path, out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "data_gen", "generate", "--mnist-dir", str(mnist_dir),
         "--out", str(out), "--train-size", "6000", "--val-size", "500", "--test-size", "500",
         "--epochs", "2", "--shard-size", "1000", "--workers", "1", "--seed", "0"],
        check=True, capture_output=True,
    )  # fmt: skip


def preempt_once(model: str, shards: Path, out: Path) -> dict[str, float]:
    """One run: SIGTERM to its process group once epoch 1 is saved; the seconds to the saved
    line and to the exit."""
    argv = [sys.executable, "-m", "seqtrain", "train", "--shards", str(shards), "--model", model,
            "--output-dir", str(out), "--run-name", "job", "--epochs", "3",
            "--wandb-mode", "offline"]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_SILENT": "true"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    metrics = out / "job" / "metrics.jsonl"
    while not metrics.exists():
        if proc.poll() is not None:
            output = proc.stdout.read()
            raise SystemExit(f"{model}: the run ended before epoch 1 was saved:\n{output}")
        time.sleep(0.05)
    time.sleep(1.0)  # into epoch 2's steps
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    saved_s = None
    for line in proc.stdout:
        if "preempted: saved" in line and saved_s is None:
            saved_s = time.monotonic() - sent
    status = proc.wait()
    exit_s = time.monotonic() - sent
    if status != EXIT_PREEMPTED or saved_s is None:
        raise SystemExit(f"{model}: exit {status} instead of a saved stop")
    return {"saved_s": saved_s, "exit_s": exit_s}


def checkpoint_mb(run: Path) -> float:
    files = (run / "checkpoints" / "last").rglob("*")
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist-dir", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["reference", "slotnet_deep"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        generate(args.mnist_dir, shards)
        results = {}
        for model in args.models:
            runs = []
            for repeat in range(args.repeats):
                out = Path(tmp) / f"{model}-{repeat}"
                runs.append(preempt_once(model, shards, out))
            results[model] = {
                "saved_s_median": statistics.median(r["saved_s"] for r in runs),
                "exit_s_median": statistics.median(r["exit_s"] for r in runs),
                "exit_s_max": max(r["exit_s"] for r in runs),
                "checkpoint_mb": round(checkpoint_mb(out / "job"), 2),
                "runs": runs,
            }
    emit_result({"bench": "preemption_save", "cpu": cpu_name(), "cores": os.cpu_count(),
                 "repeats": args.repeats, "models": results}, args.json_out)  # fmt: skip


if __name__ == "__main__":
    main()
