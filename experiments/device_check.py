"""Device check: validate and measure a GPU machine end to end; every figure as JSON in one folder.

    python -m experiments.device_check --out OUT [--wheels DIR] [--mnist-dir DIR] [--quick]

Made for a lent or air-gapped GPU machine (no network; at most 8 minutes on one GPU with 16
cores). Steps, in order; each is bounded, a failed step is recorded and the others still run,
and the exit status is 1 if any failed:

  environment       Python, torch, CUDA, GPU and CPU facts
  install           pip install --no-index --find-links WHEELS "seqtrain[dev]" (with --wheels
                    or $SEQTRAIN_WHEELS, else skipped); the torch already installed is kept
  gpu_tests         pytest -m gpu (the GPU tier; all skipped without CUDA; it runs an epoch under
                    torch.cuda.set_sync_debug_mode("error")), in the background
                    from here on: it needs the GPU little and the CPU less than the steps after
  data              seqtrain-data generate with all cores (the default full size)
  reference         the reference recipe (unchanged: batch 128, plateau, early stopping) for 20
                    epochs with the fastest honest settings (bf16, channels-last,
                    --stage-on-device), twice in this one call: the eager step (--capture off)
                    and the captured one (--capture on: a CUDA graph): training seconds (target
                    <= 10), steady ms/step (target <= 1.2), MFU per device, capture seconds,
                    test exact match (>= 99.2 %)
  members           `--members 6` of the narrow skip-blank net (recipes/narrow_long_x6.yaml)
                    against `--members 1` on the same probe steps (the cost of six), then the six
                    for as many epochs as fit (at most 30; target: 30 in <= 60 s), the ensemble
                    and each member on test, and the exported ensemble with 5 test-time views
  profile           50 steps of the eager and of the captured step under torch.profiler
                    (--profile-steps): GPU busy time (kernels) against the steps' wall time
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
import csv
import json
import os
import platform
import statistics
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
MEMBERS = 6
MEMBERS_MAX_EPOCHS = 30  # issue 25: six narrow members x 30 epochs in <= 60 s
MEMBERS_PROBE_STEPS = 200
AFTER_MEMBERS_S = 60  # kept for the profile step after the members, unless it is skipped
PROFILED_STEPS = (20, 69)  # 50 steps, past the captured step's warm-up and recording
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
        "--members-recipe",
        default="narrow_long_x6",
        help="the members step's recipe, recipes/NAME.yaml (epochs set by the step)",
    )
    p.add_argument("--members", type=int, default=MEMBERS, help="the members step's --members")
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
    """`seqtrain train` on the check's data (flags name the model; else the reference, tiny in
    --quick); its per-epoch seconds, steady throughput and MFU (from --report-to csv, when
    given) and test figures."""
    shards = Path(check.figures["data"]["shards"])
    model = [] if "--model" in flags or "--config" in flags else reference_model(check)
    run = check.work / "runs" / name
    started = time.monotonic()
    stdout = check.run(
        [sys.executable, "-m", "seqtrain", "train", "--shards", str(shards), "--output-dir",
         str(run.parent), "--run-name", name, "--epochs", str(epochs), "--wandb-mode",
         "disabled", "--seed", "0", *model, *flags],
        timeout=300,
    )  # fmt: skip
    wall = time.monotonic() - started
    epochs_run = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    test = json.loads((run / "test_metrics.json").read_text())
    train_per_epoch = check.figures["data"]["config"]["train_size"]
    seconds = [e["epoch_seconds"] for e in epochs_run]
    figures = {
        "flags": list(flags),
        "training_step": [line for line in stdout.splitlines() if "training step:" in line][-1:],
        "epochs": len(epochs_run),
        "epoch_seconds": [round(s, 3) for s in seconds],
        "training_seconds": round(sum(seconds), 2),
        "capture_seconds": round(sum(e.get("capture_seconds", 0.0) for e in epochs_run), 2),
        "wall_seconds": round(wall, 1),
        "samples_per_s_last_epoch": round(train_per_epoch / seconds[-1], 1),
        "val_exact_match": [e["val_exact_match"] for e in epochs_run],
        "test_exact_match": test["exact_match"],
        "test_count": test["count"],
        **steady_figures(run / "train_log.csv"),
    }
    if "members" in test:
        figures["member_test_exact_match"] = [m["exact_match"] for m in test["members"]]
    return figures


def steady_figures(train_log: Path) -> dict:
    """The median samples/s and MFU per device of the later half of the logged windows (the
    first ones hold warm-up, capture and autotuning); none without a train_log.csv."""
    if not train_log.is_file():
        return {}
    rows = list(csv.reader(train_log.read_text().splitlines()[1:]))
    figures = {}
    for metric, key in (("train/samples_per_s", "steady_samples_per_s"),
                        ("train/mfu_per_device", "steady_mfu_per_device")):  # fmt: skip
        values = [float(value) for _, name, value in rows if name == metric]
        if values:
            figures[key] = round(statistics.median(values[len(values) // 2 :]), 5)
    return figures


def logged(check: Check) -> list[str]:
    """Throughput and MFU into train_log.csv, every few steps in --quick's short epochs."""
    return ["--report-to", "csv", *(["--log-every", "2"] if check.quick else [])]


def reference_model(check: Check) -> list[str]:
    return ["--model", "tiny", "--batch-size", "32"] if check.quick else ["--model", "reference"]


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


def capture_flag(check: Check) -> str:
    """--capture for the captured runs: on where a GPU is (refused there if it cannot hold),
    auto on a CPU (--quick), where the step runs eagerly and says so."""
    return "on" if check.figures["environment"].get("gpus") else "auto"


def reference(check: Check) -> dict:
    epochs = 2 if check.quick else 20
    batch = 32 if check.quick else 128
    flags = [*fast_flags(check), "--stage-on-device", *logged(check)]
    runs = {
        "eager": train_run(check, "reference_eager", epochs, *flags, "--capture", "off"),
        "captured": train_run(check, "reference_captured", epochs, *flags, "--capture",
                              capture_flag(check)),
    }  # fmt: skip
    for run in runs.values():
        if "steady_samples_per_s" in run:
            run["steady_ms_per_step"] = round(1000 * batch / run["steady_samples_per_s"], 4)
        run["met_target"] = (
            run["epochs"] == 20
            and run["training_seconds"] <= 10.0
            and run["test_exact_match"] >= 0.992
        )
    return {
        **runs,
        "targets": {"training_seconds": 10.0, "steady_ms_per_step": 1.2, "test_exact_match": 0.992},
        "captured_over_eager_training_seconds": round(
            runs["captured"]["training_seconds"] / runs["eager"]["training_seconds"], 3
        ),
    }


def members(check: Check) -> dict:
    """The cost of N members against one (same probe steps), then N for the epochs that fit."""
    count = 2 if check.quick else check.args.members
    recipe = REPO / "recipes" / f"{check.args.members_recipe}.yaml"
    flags = ["--config", str(recipe), *(["--model", "tiny"] if check.quick else []),
             *fast_flags(check), "--stage-on-device", *logged(check)]  # fmt: skip
    probe_steps = 3 if check.quick else MEMBERS_PROBE_STEPS
    probe = {
        k: train_run(check, f"members_probe_{k}", 1, *flags, "--members", str(k),
                     "--steps-per-epoch", str(probe_steps))
        for k in (1, count)
    }  # fmt: skip
    sizing = members_epochs(check, probe[count], probe_steps)
    run = train_run(check, "members", sizing["epochs"], *flags, "--members", str(count))
    exported = check.work / "runs" / "members" / "export"
    check.python(
        "-m", "seqtrain", "evaluate", "--checkpoint", str(exported),
        "--shards", check.figures["data"]["shards"], "--split", "test", "--tta-shift", "1",
        "--json", str(check.out / "raw" / "members_tta1.json"), timeout=120,
    )  # fmt: skip
    tta = json.loads((check.out / "raw" / "members_tta1.json").read_text())
    return {
        "members": count,
        "probe_steps": probe_steps,
        "probe_seconds": {k: r["epoch_seconds"][0] for k, r in probe.items()},
        "members_over_one_probe_seconds": round(
            probe[count]["epoch_seconds"][0] / probe[1]["epoch_seconds"][0], 3
        ),
        **sizing,
        "run": run,
        "target": {"epochs": MEMBERS_MAX_EPOCHS, "training_seconds": 60.0},
        "test_exact_match_tta1": tta["exact_match"],
    }


def members_epochs(check: Check, probe: dict, probe_steps: int) -> dict:
    """As many epochs as the time left allows at the probe's step rate (val included, so it
    errs short), after what a run spends outside its epochs, at most MEMBERS_MAX_EPOCHS."""
    seconds_per_step = probe["epoch_seconds"][0] / probe_steps
    overhead_s = probe["wall_seconds"] - probe["training_seconds"] + 30  # + the 5-view test
    after = 0 if "profile" in check.args.skip else AFTER_MEMBERS_S
    steps_per_epoch = check.figures["data"]["config"]["train_size"] / 128  # the recipe's batch
    fit = int((check.remaining() - after - overhead_s) / (steps_per_epoch * seconds_per_step))
    epochs = max(1, min(fit, 2 if check.quick else MEMBERS_MAX_EPOCHS))
    return {"probe_seconds_per_step": round(seconds_per_step, 5), "epochs_that_fit": fit,
            "epochs": epochs}  # fmt: skip


def profile(check: Check) -> dict:
    """PROFILED_STEPS of the eager and the captured step in a torch.profiler trace each."""
    first, last = (2, 5) if check.quick else PROFILED_STEPS
    steps = ["--steps-per-epoch", str(last + 2), "--profile-steps", f"{first}:{last}"]
    result = {}
    for name, capture in (("eager", "off"), ("captured", capture_flag(check))):
        run = train_run(check, f"profile_{name}", 1, *fast_flags(check), "--stage-on-device",
                        "--capture", capture, *steps)  # fmt: skip
        trace = check.work / "runs" / f"profile_{name}" / "profile" / "rank0.pt.trace.json"
        result[name] = {"training_step": run["training_step"], **trace_busy(trace)}
    return {"steps": [first, last], **result}


def trace_busy(trace: Path) -> dict:
    """The profiled steps' wall time (first step span's start to the last one's end) and the GPU
    busy time in it (the union of kernel and copy intervals), in ms."""
    events = json.loads(trace.read_text())["traceEvents"]
    steps = [e for e in events if str(e.get("name", "")).startswith("train step ")]
    if not steps:
        raise StepFailedError(f"{trace.name} holds no 'train step' span")
    start = min(e["ts"] for e in steps)
    end = max(e["ts"] + e["dur"] for e in steps)
    spans = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e
    )
    busy, reach = 0.0, float("-inf")
    for begin, finish in spans:
        begin = max(begin, reach)
        if finish > begin:
            busy += finish - begin
            reach = finish
    wall = end - start
    return {"steps": len(steps), "wall_ms": round(wall / 1000, 3),
            "gpu_busy_ms": round(busy / 1000, 3),
            "gpu_busy_fraction": round(busy / wall, 4) if wall else None}  # fmt: skip


STEPS: list[tuple[str, Callable[[Check], dict]]] = [
    ("environment", environment),
    ("install", install),
    ("gpu_tests", gpu_tests),
    ("data", data),
    ("reference", reference),
    ("members", members),
    ("profile", profile),
    ("stream_vs_staged", stream_vs_staged),
    ("loader", loader),
    ("step_overheads", step_overheads),
    ("train_throughput", train_throughput),  # last: the longest, and it needs --baseline
]
NEEDS_DATA = {"reference", "members", "profile", "stream_vs_staged"}
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
