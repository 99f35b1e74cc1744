"""Device check: validate and measure a GPU machine end to end; every figure as JSON in one folder.

    python -m experiments.device_check --out OUT [--wheels DIR] [--mnist-dir DIR] [--quick]

Made for a lent or air-gapped GPU machine (no network; at most 8 minutes on one GPU with 16
cores). Steps, in order; each is bounded, a failed step is recorded and the others still run,
and the exit status is 1 if any failed:

  environment       Python, torch, CUDA, GPU and CPU facts
  install           pip install --no-index --find-links WHEELS "seqtrain[dev]" (with --wheels
                    or $SEQTRAIN_WHEELS, else skipped); the torch already installed is kept
  gpu_tests         pytest -m gpu (the GPU tier; all skipped without CUDA), in the background
                    from here on: it needs the GPU little and the CPU less than the steps after
  data              seqtrain-data generate with all cores (the default full size)
  ensemble          issue 13's quality recipe: `narrow_long` members trained at once on the
                    one GPU (experiments.time_to_accuracy --parallel), their epochs sized to the
                    time left by a short probe of all members together and capped at the seed
                    recipe's 0.87 PFLOP in all; then the members as one ensemble on test
  reference         the reference recipe for 20 epochs with the fastest honest settings
                    (bf16, channels-last, --stage-on-device, big eval batches): training
                    seconds (target <= 10 on an H100-class GPU) and test exact match
  stream_vs_staged  the same 2 epochs streamed by loader workers, then --stage-on-device
  loader            bench.loader_throughput, and the loader workers one GPU step needs
  step_overheads    bench.step_overheads on the training device
  train_throughput  bench.train_throughput (needs the seed loop, --baseline)

The steps run in that order of importance: when the budget runs short, the last ones are
skipped (recorded as such).

OUT/<step>.json holds each step's figures, OUT/summary.json every step's status and seconds.
--quick shrinks every size (tiny data and model, few steps) so the whole check runs on a CPU in
a couple of minutes: tests/integration/experiments/test_device_check.py runs it that way. Only
the standard library is imported here, so the check runs before seqtrain is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 480  # 8 minutes for the whole check
ENSEMBLE_MEMBERS = 6
ENSEMBLE_PFLOP = 0.87  # issue 13: the seed recipe's training compute, every member counted
ENSEMBLE_PROBE_STEPS = 300
MEMBER_FIGURES = ("seed", "epochs_run", "train_pflop", "wall_seconds", "exact_match_per_epoch",
                  "test_exact_match")  # fmt: skip
AFTER_ENSEMBLE_S = 90  # kept for the reference step after the ensemble, unless it is skipped
DEFAULT_BASELINE = REPO.parent / "shared" / "bench" / "seed_baseline.py"


class SkipStepError(Exception):
    """A step that cannot run here (the reason is recorded; not a failure)."""


class StepFailedError(Exception):
    """A step that ran and failed (the reason is recorded)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="output folder ($OUT)")
    p.add_argument(
        "--wheels",
        type=Path,
        default=os.environ.get("SEQTRAIN_WHEELS"),
        help="folder of wheels to install seqtrain[dev] from, offline ($SEQTRAIN_WHEELS)",
    )
    p.add_argument("--install-dry-run", action="store_true", help="resolve the install only")
    p.add_argument(
        "--mnist-dir",
        type=Path,
        default=os.environ.get("SEQTRAIN_MNIST_DIR", REPO.parent / "shared" / "mnist"),
        help="MNIST IDX files ($SEQTRAIN_MNIST_DIR)",
    )
    p.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE, help="the seed loop")
    p.add_argument("--work-dir", type=Path, help="data and runs (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke run of all")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help="time for the whole check")
    p.add_argument("--skip", nargs="*", default=[], help="steps to leave out")
    p.add_argument(
        "--ensemble-recipe",
        default="narrow_long",
        help="the ensemble step's recipe, recipes/NAME.yaml (epochs set by the step)",
    )
    p.add_argument("--ensemble-members", type=int, default=ENSEMBLE_MEMBERS)
    p.add_argument(
        "--ensemble-pflop",
        type=float,
        default=ENSEMBLE_PFLOP,
        help="training compute of all members together, at most",
    )
    args = p.parse_args(argv)
    if args.out is None:
        p.error("pass --out FOLDER (or set $OUT)")
    return args


class Check:
    """Runs the steps in order within the budget, writing each one's JSON as it ends."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work, self.out = args, work, args.out
        self.quick = args.quick
        self.deadline = time.monotonic() + args.budget_s
        self.summary: dict[str, dict] = {}
        self.figures: dict[str, dict] = {}
        self.env = {**os.environ, "SEQTRAIN_MNIST_DIR": str(args.mnist_dir)}

    def step(self, name: str, work: Callable[[], dict]) -> None:
        started = time.monotonic()
        status, reason, figures = "ok", None, {}
        if name in self.args.skip:
            status, reason = "skipped", "--skip"
        else:
            try:
                figures = work()
            except SkipStepError as e:
                status, reason = "skipped", str(e)
            except (StepFailedError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as e:
                status, reason = "failed", f"{type(e).__name__}: {e}"[-2000:]
        seconds = round(time.monotonic() - started, 1)
        record = {"step": name, "status": status, "seconds": seconds, **figures}
        if reason:
            record["reason"] = reason
        self.figures[name] = figures
        self.summary[name] = {k: v for k, v in record.items() if k != "step"}
        write_json(self.out / f"{name}.json", record)
        print(f"device_check: {name}: {status} ({seconds} s){': ' + reason if reason else ''}")

    def remaining(self, floor: float = 10) -> float:
        """Seconds left in the budget; a step with less than `floor` left is skipped."""
        left = self.deadline - time.monotonic()
        if left < floor:
            raise SkipStepError(f"out of time ({left:.0f} s of --budget-s left)")
        return left

    def run(self, argv: list[str], timeout: float | None = None, **kwargs) -> str:
        """Run a command of this check; its stdout, or StepFailedError with its output's tail."""
        limit = min(timeout or 1e9, self.remaining())
        result = subprocess.run(
            argv,
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
            **kwargs,
        )
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-1500:]
            raise StepFailedError(f"{Path(argv[1]).name if len(argv) > 1 else argv[0]} exited "
                             f"{result.returncode}: {tail}")  # fmt: skip
        return result.stdout

    def python(self, *argv: str, timeout: float | None = None) -> str:
        return self.run([sys.executable, *argv], timeout)

    def bench(self, module: str, name: str, *argv: str, timeout: float | None = None) -> dict:
        """`python -m MODULE ... --json-out OUT/raw/NAME.json` from the checkout; that JSON."""
        json_out = self.out / "raw" / f"{name}.json"
        self.python("-m", module, *argv, "--json-out", str(json_out), timeout=timeout)
        return json.loads(json_out.read_text())


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


# --- the steps -------------------------------------------------------------------------------


def environment(check: Check) -> dict:
    probe = (
        "import json, os, torch\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
        "  'cudnn': torch.backends.cudnn.version() if cuda else None,\n"
        "  'gpus': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],\n"
        "  'bf16_native': cuda and torch.cuda.get_device_capability() >= (8, 0)}))\n"
    )
    facts = json.loads(check.python("-c", probe, timeout=120))
    return {
        **facts,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "quick": check.quick,
    }


def torch_version(check: Check) -> str:
    return check.python("-c", "import torch; print(torch.__version__)", timeout=120).strip()


def install(check: Check) -> dict:
    wheels = check.args.wheels
    if wheels is None:
        raise SkipStepError("no --wheels folder (or $SEQTRAIN_WHEELS): using what is installed")
    if not any(wheels.glob("seqtrain-*.whl")):
        raise StepFailedError(
            f"{wheels} holds no seqtrain wheel "
            "(see docs/benchmarks/h200-device-check-2026-11-30.md)"
        )
    before = torch_version(check)
    argv = ["-m", "pip", "install", "--no-index", "--find-links", str(wheels), "seqtrain[dev]"]
    if check.args.install_dry_run:
        argv.append("--dry-run")
    output = check.python(*argv, timeout=300)
    after = torch_version(check)
    if after != before:
        raise StepFailedError(f"the install replaced torch {before} with {after}")
    return {"torch": after, "wheels": str(wheels), "dry_run": check.args.install_dry_run,
            "pip_tail": output.strip().splitlines()[-1:]}  # fmt: skip


def gpu_tests(check: Check) -> dict:
    report = check.out / "raw" / "gpu_tests.xml"
    report.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider",
            f"--junitxml={report}"]  # fmt: skip
    try:
        check.run(argv, timeout=240)
    except StepFailedError:
        if not report.is_file():
            raise
    cases = ET.parse(report).getroot().iter("testcase")
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed = []
    for case in cases:
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            failed.append(f"{case.get('classname')}::{case.get('name')}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    if failed:
        raise StepFailedError(f"{len(failed)} GPU test(s) failed: {', '.join(failed)}")
    return counts


def data_sizes(check: Check) -> list[str]:
    if check.quick:
        return ["--train-size", "400", "--val-size", "100", "--test-size", "100", "--epochs",
                "2", "--shard-size", "100", "--chunk-size", "32"]  # fmt: skip
    return []  # the generator's defaults: the full-size data set


def data(check: Check) -> dict:
    shards = check.work / "shards"
    started = time.monotonic()
    check.run(
        [sys.executable, "-m", "data_gen", "generate", "--mnist-dir", str(check.args.mnist_dir),
         "--out", str(shards), "--seed", "0", *data_sizes(check)],
        timeout=180,
    )  # fmt: skip
    seconds = time.monotonic() - started
    manifest = json.loads((shards / "manifest.json").read_text())
    size = sum(f.stat().st_size for f in shards.rglob("*.tar"))
    return {"shards": str(shards), "seconds": round(seconds, 1), "bytes": size,
            "workers": os.cpu_count(), "config": manifest.get("config", {})}  # fmt: skip


def train_throughput(check: Check) -> dict:
    if not check.args.baseline.is_file():
        raise SkipStepError(f"no seed loop at {check.args.baseline} (pass --baseline)")
    sizes = ["--max-seconds", "60"]
    if check.quick:
        sizes = ["--batch-size", "8", "--rounds", "3", "--steps", "1", "--warmup", "1",
                 "--no-compile", "--max-seconds", "20"]  # fmt: skip
    return check.bench("bench.train_throughput", "train_throughput", "--baseline",
                       str(check.args.baseline), *sizes, timeout=150)  # fmt: skip


def train_run(check: Check, name: str, epochs: int, *flags: str) -> dict:
    """`seqtrain train` on the check's data; its per-epoch seconds and test figures."""
    shards = Path(check.figures["data"]["shards"])
    model = ["--model", "tiny", "--batch-size", "32"] if check.quick else ["--model", "reference"]
    runs = check.work / "runs"
    check.run(
        [sys.executable, "-m", "seqtrain", "train", "--shards", str(shards), "--output-dir",
         str(runs), "--run-name", name, "--epochs", str(epochs), "--wandb-mode", "disabled",
         "--seed", "0", *model, *flags],
        timeout=300,
    )  # fmt: skip
    run = runs / name
    epochs_run = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    test = json.loads((run / "test_metrics.json").read_text())
    manifest = json.loads((shards / "manifest.json").read_text())
    train_per_epoch = manifest["config"]["train_size"]
    seconds = [e["epoch_seconds"] for e in epochs_run]
    return {
        "flags": list(flags),
        "epochs": len(epochs_run),
        "epoch_seconds": [round(s, 3) for s in seconds],
        "training_seconds": round(sum(seconds), 2),
        "samples_per_s_last_epoch": round(train_per_epoch / seconds[-1], 1),
        "val_exact_match": [e["val_exact_match"] for e in epochs_run],
        "test_exact_match": test["exact_match"],
        "test_count": test["count"],
    }


def fast_flags(check: Check) -> list[str]:
    """The fastest honest settings (bf16 where the hardware has it natively)."""
    precision = "bf16" if check.figures["environment"].get("bf16_native") else "auto"
    return ["--mixed-precision", precision, "--channels-last", "--eval-batch-size",
            "500" if check.quick else "5000"]  # fmt: skip


def loader_workers(check: Check) -> int:
    return 1 if check.quick else min(8, max(1, (os.cpu_count() or 2) // 2))


def stream_vs_staged(check: Check) -> dict:
    streamed = train_run(check, "streamed", 2, *fast_flags(check), "--num-workers",
                         str(loader_workers(check)))  # fmt: skip
    staged = train_run(check, "staged", 2, *fast_flags(check), "--stage-on-device")
    return {
        "streamed": streamed,
        "staged": staged,
        "staged_over_streamed_last_epoch": round(
            staged["samples_per_s_last_epoch"] / streamed["samples_per_s_last_epoch"], 3
        ),
    }


def loader(check: Check) -> dict:
    workers = ["0", "1"] if check.quick else ["1", "2", "4", "8"]
    samples = "2000" if check.quick else "200000"
    result = check.bench("bench.loader_throughput", "loader_throughput", "--samples", samples,
                         "--epochs", "1" if check.quick else "2", "--workers", *workers,
                         timeout=150)  # fmt: skip
    per_worker = max(r["per_worker"] for r in result["results"] if r["num_workers"] > 0)
    step = check.figures.get("stream_vs_staged", {}).get("staged", {})
    result["loader_per_worker_samples_per_s"] = round(per_worker, 1)
    if step:
        # The staged run's rate is the GPU step's (no loader in the way): the workers needed.
        rate = step["samples_per_s_last_epoch"]
        result["gpu_step_samples_per_s"] = rate
        result["workers_to_feed_the_step"] = round(rate / per_worker, 2)
    return result


def step_overheads(check: Check) -> dict:
    sizes = ["--samples", "2000", "--steps", "20", "--batch-size", "16"] if check.quick else []
    return check.bench("bench.step_overheads", "step_overheads", *sizes, timeout=150)


def ensemble(check: Check) -> dict:
    data = check.figures["data"]
    train_size = data["config"]["train_size"]
    members = 2 if check.quick else check.args.ensemble_members
    common = ["--shards", data["shards"], "--recipes", check.args.ensemble_recipe,
              "--parallel", str(members),
              "--seeds", *map(str, range(members))]  # fmt: skip
    probe_steps = 5 if check.quick else ENSEMBLE_PROBE_STEPS
    probe = check.bench("experiments.time_to_accuracy", "ensemble_probe", *common, "--epochs",
                        "1", "--steps-per-epoch", str(probe_steps), "--work-dir",
                        str(check.work / "ensemble_probe"), timeout=300)  # fmt: skip
    sizing = ensemble_epochs(check, probe["results"], probe_steps, members, train_size)
    result = check.bench("experiments.time_to_accuracy", "ensemble", *common, "--epochs",
                         str(sizing["epochs"]), "--ensemble-tta", "0", "--budget-s",
                         str(round(check.remaining())), "--work-dir",
                         str(check.work / "ensemble"))  # fmt: skip
    members_done = result["results"]
    if not result["ensembles"] or not all(r["finished"] for r in members_done):
        raise StepFailedError("not every member finished")
    return {
        **sizing,
        "members": [{k: r[k] for k in MEMBER_FIGURES} for r in members_done],
        "member_test_exact_match": result["seed_summaries"][0],
        "ensemble": result["ensembles"][0],
        "runs": str(check.work / "ensemble" / "runs"),
    }


def ensemble_epochs(
    check: Check, probe: list[dict], probe_steps: int, members: int, train_size: int
) -> dict:
    """The members' epochs: as many as the time left allows at the probe's step rate (slowest
    member, start-up and val included, so it errs short), at most the compute budget's."""
    if not all(r["finished"] for r in probe):
        raise StepFailedError("the probe's members did not all finish")
    batch = probe[0]["batch_size"]
    steps_per_s = probe_steps / max(r["epoch_seconds"][0] for r in probe)
    # what a member spends outside its epochs (start-up, test, export), and the ensemble's test
    overhead_s = max(r["wall_seconds"] - r["epoch_seconds"][0] for r in probe) + 30
    after = 0 if "reference" in check.args.skip else AFTER_ENSEMBLE_S
    training_s = check.remaining() - after - overhead_s
    fit = int(training_s * steps_per_s * batch / train_size)
    gflop = probe[0]["gflop_per_train_sample"]
    budget = int(check.args.ensemble_pflop * 1e6 / (members * train_size * gflop))
    epochs = max(1, min(fit, budget, 2 if check.quick else budget))
    return {"probe_steps_per_s": round(steps_per_s, 2), "probe_overhead_s": round(overhead_s, 1),
            "epochs_that_fit": fit, "epochs_in_budget": budget, "epochs": epochs,
            "batch_size": batch, "gflop_per_train_sample": gflop}  # fmt: skip


def reference(check: Check) -> dict:
    epochs = 2 if check.quick else 20
    run = train_run(check, "reference", epochs, *fast_flags(check), "--stage-on-device",
                    "--num-workers", str(loader_workers(check)))  # fmt: skip
    run["target_training_seconds"] = 10.0
    run["met_target"] = run["epochs"] == 20 and run["training_seconds"] <= 10.0
    return run


STEPS: list[tuple[str, Callable[[Check], dict]]] = [
    ("environment", environment),
    ("install", install),
    ("gpu_tests", gpu_tests),
    ("data", data),
    ("ensemble", ensemble),
    ("reference", reference),
    ("stream_vs_staged", stream_vs_staged),
    ("loader", loader),
    ("step_overheads", step_overheads),
    ("train_throughput", train_throughput),  # last: the longest, and it needs --baseline
]
NEEDS_DATA = {"ensemble", "stream_vs_staged", "reference"}
IN_BACKGROUND = {"gpu_tests"}


def without_data(check: Check) -> dict:
    raise SkipStepError("the data step did not succeed")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="device_check_") as tmp:
        check = Check(args, args.work_dir or Path(tmp))
        background = []
        for name, work in STEPS:
            if name in NEEDS_DATA and check.summary["data"]["status"] != "ok":
                work = without_data
            if name in IN_BACKGROUND:
                thread = threading.Thread(target=check.step, args=(name, partial(work, check)))
                thread.start()
                background.append(thread)
            else:
                check.step(name, partial(work, check))
        for thread in background:
            thread.join()
    failed = [name for name, s in check.summary.items() if s["status"] == "failed"]
    write_json(args.out / "summary.json", {"failed": failed, "steps": check.summary})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
