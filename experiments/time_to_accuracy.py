"""Time to accuracy: seconds and epochs for each recipe to reach a target val exact match.

    .venv/bin/python -m experiments.time_to_accuracy --mnist-dir ../shared/mnist
        [--train-size 6000] [--val-size 1000] [--test-size 2000] [--epochs 5]
        [--target 0.95] [--budget-s 420] [--recipes reference slotnet_onecycle]
        [--shards DIR] [--work-dir DIR] [--json-out experiments/results/time_to_accuracy.json]
        [--seeds 0 1 2 [--parallel 3] [--ensemble-tta N] [--tta-shift N]] [--steps-per-epoch N]
        [--processes 1 2 [--ledger]]

Generates one small shard set (`seqtrain-data generate`; or reuses --shards), then trains each
recipe on it with `seqtrain train --config recipes/NAME.yaml` in its own subprocess (the real
CLI, fresh process state), stopped after --budget-s seconds; `seed_baseline` is no recipe file
but the seed's own script (--baseline). From the run's metrics.jsonl: the first epoch whose val
exact match reaches --target, and the training+validation seconds up to it (the sum of
`epoch_seconds`, so start-up, test evaluation and export are excluded); the wall time of the
whole process beside it. Prints a table, then one JSON line (also written to --json-out).
On a GPU machine the same command runs unchanged (the trainer's defaults, bf16 autocast and
channels-last, apply there).

--seeds trains each recipe once per seed (mean and spread of test exact match; with
--ensemble-tta, the seeds as one ensemble on test; with --tta-shift, each seed's best model with
test-time shifts, on val without and with them to choose on, and on test); --parallel N trains
N of them at once, for a GPU that small models leave mostly idle (measured on an H200 in
docs/benchmarks/h200-device-check-2026-11-30.md: processes time-share the GPU, so N at once is
not N times one).

--processes 1 2 trains each recipe (and seed) once per number of processes: N > 1 through
`accelerate launch --multi_gpu --num_processes N` (gloo ranks on a CPU machine, one per GPU on a
GPU node; run NAME[_seedS]_Nproc), each count summarised apart. With --ledger every run writes
its sample ledger ($SEQTRAIN_SAMPLE_LEDGER) to runs/RUN.ledger/, and each seed's ledgers are
compared across the process counts: with a --global-batch-size recipe, identical.

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
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import torch
import yaml

from bench.emit import cpu_name, emit_result
from bench.stores import free_port
from seqtrain.common.cliparse import load_config
from seqtrain.config import RunConfig
from seqtrain.data.position import LEDGER_ENV
from seqtrain.models import build_model
from seqtrain.models.flops import flops_per_sample

REPO = Path(__file__).resolve().parents[1]
SEED_BASELINE = "seed_baseline"  # ../shared/bench/seed_baseline.py, run as it is

RECIPES = REPO / "recipes"  # recipes/NAME.yaml: the recipe NAME, a partial RunConfig


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


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
        "--steps-per-epoch",
        type=int,
        help="pass --steps-per-epoch to recipes that set none (a short speed probe)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="train up to N of a recipe's seeds at once (one GPU fits many small runs)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="train every recipe once per seed (`--seed S`, run NAME_seedS) and report the mean "
        "and spread of test exact match",
    )
    p.add_argument(
        "--ensemble-tta",
        type=int,
        metavar="N",
        help="with --seeds: also evaluate each recipe's seeds as one ensemble on test "
        "(`seqtrain evaluate --ensemble ... --tta-shift N`)",
    )
    p.add_argument(
        "--tta-shift",
        type=int,
        metavar="N",
        help="with --seeds: also evaluate each seed's best model with test-time shifts "
        "(`seqtrain evaluate --tta-shift N`): val without and with them, test with them",
    )
    p.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1],
        help="train every recipe (and seed) once per number of processes; N > 1 through "
        "`accelerate launch --multi_gpu --num_processes N`",
    )
    p.add_argument(
        "--ledger",
        action="store_true",
        help="write each run's sample ledger beside it (runs/RUN.ledger/) and compare each "
        "seed's ledgers across --processes",
    )
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
    known = {*recipe_names(), SEED_BASELINE}
    unknown = set(args.recipes) - known
    if unknown:
        p.error(
            f"unknown recipes {sorted(unknown)} (no recipes/NAME.yaml); choose from {sorted(known)}"
        )
    if args.parallel < 1:
        p.error(f"--parallel must be >= 1, got {args.parallel}")
    if min(args.processes) < 1:
        p.error(f"--processes must be >= 1, got {min(args.processes)}")
    if args.tta_shift is not None and args.tta_shift < 1:
        p.error(f"--tta-shift must be >= 1, got {args.tta_shift}")
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


def run_budgeted(
    argv: list[str], budget_s: float, env: dict[str, str] | None = None
) -> tuple[bool, float, str]:
    """Run argv (in `env`, default this environment), killed after budget_s with its whole
    process group (loader workers and launched ranks included); (finished with exit 0, wall
    seconds, its stdout)."""
    start = time.perf_counter()
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
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


def launcher(processes: int) -> list[str]:
    """The command that starts `seqtrain` on `processes` processes: itself for one, else
    `accelerate launch` on a free port (the trainer's --mixed-precision decides precision)."""
    if processes == 1:
        return [sys.executable, "-m", "seqtrain"]
    accelerate = Path(sys.executable).with_name("accelerate")
    return [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--main_process_port", str(free_port()),
        "--dynamo_backend", "no", "-m", "seqtrain",
    ]  # fmt: skip


def train(
    args: argparse.Namespace,
    shards: Path,
    out: Path,
    name: str,
    seed: int | None = None,
    processes: int = 1,
) -> dict:
    """One recipe (`seqtrain train --config recipes/NAME.yaml`) in a subprocess (on `processes`
    processes), killed at the budget; its per-epoch and test results. The recipe's own epochs
    and steps per epoch win over --epochs and --steps-per-epoch (a compute-budget recipe sets
    both)."""
    recipe = RECIPES / f"{name}.yaml"
    pinned = yaml.safe_load(recipe.read_text()).get("train", {})
    config = load_config(RunConfig, recipe)
    extra = [] if "epochs" in pinned else ["--epochs", str(args.epochs)]
    if args.channels_last is not None:
        extra += ["--channels-last" if args.channels_last else "--no-channels-last"]
    if args.steps_per_epoch is not None and "steps_per_epoch" not in pinned:
        extra += ["--steps-per-epoch", str(args.steps_per_epoch)]
    run_name = name if seed is None else f"{name}_seed{seed}"
    run_name += f"_{processes}proc" if processes > 1 else ""
    if seed is not None:
        extra = [*extra, "--seed", str(seed)]
    command = [
        "train", "--config", str(recipe), "--shards", str(shards),
        "--num-workers", str(args.num_workers), "--output-dir", str(out), "--run-name", run_name,
        "--wandb-mode", "disabled", *extra,
    ]  # fmt: skip
    if args.work_dir is not None:
        command += ["--resume", "auto"]
    start = launcher(processes)
    argv = [*start, *command]
    run = out / run_name
    env = {**os.environ, LEDGER_ENV: str(ledger_dir(run))} if args.ledger else None
    metrics, test = run / "metrics.jsonl", run / "test_metrics.json"
    if args.work_dir is not None and test.exists():
        finished, wall = True, None  # finished by an earlier invocation: read its results back
    else:
        finished, wall, _ = run_budgeted(argv, args.budget_s, env)
    epochs = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    reached = next((e for e in epochs if e["val_exact_match"] >= args.target), None)
    best = next((e for e in reversed(epochs) if e.get("best")), None)
    gflop = flops_per_sample(
        partial(build_model, config.model.model), length_weights=shard_length_weights(shards)
    )
    samples = samples_trained(run, epochs)
    return {
        "recipe": name,
        "seed": seed,
        "processes": processes,
        "run": str(run),
        "argv": ["seqtrain", *command] if processes == 1 else ["accelerate", *start[1:], *command],
        "gflop_per_train_sample": gflop / 1e9,
        "batch_size": config.data.batch_size,
        "global_batch_size": config.data.global_batch_size,
        "train_samples": samples,
        "train_pflop": samples * gflop / 1e15,
        "finished": finished,
        "wall_seconds": wall,
        "epochs_run": len(epochs),
        "epochs_to_target": reached["epoch"] if reached else None,
        "seconds_to_target": (
            sum(e["epoch_seconds"] for e in epochs[: reached["epoch"]]) if reached else None
        ),
        "target_split": "val",
        "exact_match_per_epoch": [e["val_exact_match"] for e in epochs],
        # the tested checkpoint: the lowest val loss (the reference recipe's best model)
        "best_epoch": best["epoch"] if best else None,
        "val_exact_match_at_best": best["val_exact_match"] if best else None,
        "epoch_seconds": [e["epoch_seconds"] for e in epochs],
        "test_exact_match": json.loads(test.read_text())["exact_match"] if test.exists() else None,
    }


def ledger_dir(run: Path) -> Path:
    """Where a run's sample ledger goes: beside its run folder, which the trainer owns."""
    return run.with_name(f"{run.name}.ledger")


def ledger_steps(folder: Path) -> dict[tuple[int, int], list[int]]:
    """Each (epoch, batch) of a ledger: the ranks' sample positions joined in rank order. A
    step trained again after a resume is recorded again; its last record counts."""
    ranks: list[dict[tuple[int, int], list[int]]] = []
    for path in sorted(folder.glob("rank*.jsonl"), key=lambda p: int(p.stem[4:])):
        lines = (json.loads(x) for x in path.read_text().splitlines())
        ranks.append({(x["epoch"], x["batch"]): x["samples"] for x in lines})
    steps: dict[tuple[int, int], list[int]] = {}
    for rank in ranks:
        for step, samples in rank.items():
            steps.setdefault(step, []).extend(samples)
    return steps


def compare_ledgers(runs: list[dict]) -> list[dict]:
    """For each seed of one recipe: is each process count's ledger the first count's?"""
    checks = []
    for seed in dict.fromkeys(r["seed"] for r in runs):
        same_seed = [r for r in runs if r["seed"] == seed]
        first = ledger_steps(ledger_dir(Path(same_seed[0]["run"])))
        for other in same_seed[1:]:
            steps = ledger_steps(ledger_dir(Path(other["run"])))
            checks.append({
                "recipe": other["recipe"],
                "seed": seed,
                "processes": [same_seed[0]["processes"], other["processes"]],
                "steps": [len(first), len(steps)],
                "epochs": sorted({epoch for epoch, _ in steps}),
                "samples_per_step": sorted({len(s) for s in steps.values()}),
                "identical": bool(first) and steps == first,
            })  # fmt: skip
    return checks


def shard_length_weights(shards: Path) -> tuple[float, ...]:
    return tuple(json.loads((shards / "manifest.json").read_text())["config"]["length_weights"])


def samples_trained(run: Path, epochs: list[dict]) -> int:
    """Optimizer steps x global batch: the samples the finished epochs trained on."""
    if not epochs:
        return 0
    batch = yaml.safe_load((run / "config.yaml").read_text())["data"]["batch_size"]
    return epochs[-1]["step"] * batch * epochs[-1].get("num_processes", 1)


def mean_and_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where undefined)."""
    mean = sum(values) / len(values) if values else None
    spread = (
        (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        if len(values) > 1
        else None
    )
    return mean, spread


def seed_summary(results: list[dict]) -> dict:
    """Mean and spread of test exact match over one recipe's seeds (and the mean val exact match
    of the tested checkpoints, the figure to choose recipes on); with test-time views, theirs
    too."""
    tests = [r["test_exact_match"] for r in results if r["test_exact_match"] is not None]
    mean, spread = mean_and_std(tests)
    best_vals = [
        r["val_exact_match_at_best"] for r in results if r["val_exact_match_at_best"] is not None
    ]
    summary = {
        "recipe": results[0]["recipe"],
        "processes": results[0].get("processes", 1),
        "seeds": [r["seed"] for r in results],
        "val_exact_match_at_best_mean": mean_and_std(best_vals)[0],
        "test_exact_match": tests,
        "test_exact_match_mean": mean,
        "test_exact_match_std": spread,
        "test_exact_match_min": min(tests, default=None),
        "train_pflop_max": max(r["train_pflop"] for r in results),
    }
    views = [r["views"] for r in results if r.get("views")]
    if views:
        views_mean, views_spread = mean_and_std([v["test_exact_match"] for v in views])
        summary["views"] = {
            "tta_views": views[0]["tta_views"],
            "val_exact_match_plain_mean": mean_and_std([v["val_exact_match_plain"] for v in views])[
                0
            ],
            "val_exact_match_mean": mean_and_std([v["val_exact_match"] for v in views])[0],
            "test_exact_match": [v["test_exact_match"] for v in views],
            "test_exact_match_mean": views_mean,
            "test_exact_match_std": views_spread,
        }
    return summary


def run_evaluate(shards: Path, runs: list[str], tta: int, split: str, out: Path) -> dict:
    """`seqtrain evaluate` of runs' best models (more than one: their mean softmax) with
    --tta-shift on one split; its JSON, plus the command as run."""
    argv = [
        sys.executable, "-m", "seqtrain", "evaluate", "--checkpoint", runs[0],
        *(["--ensemble", *runs[1:]] if runs[1:] else []), "--tta-shift", str(tta),
        "--shards", str(shards), "--split", split, "--json", str(out), "--num-workers", "1",
    ]  # fmt: skip
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return {**json.loads(out.read_text()), "argv": ["seqtrain", *argv[3:]]}


def evaluate_ensemble(shards: Path, results: list[dict], tta: int, out: Path) -> dict:
    """The seeds' best models as one ensemble (mean softmax), with --tta-shift, on test."""
    runs = [r["run"] for r in results]
    result = run_evaluate(shards, runs, tta, "test", out)
    return {
        "recipe": results[0]["recipe"],
        "members": runs,
        "tta_views": result["tta_views"],
        "train_pflop": sum(r["train_pflop"] for r in results),
        "inference_gflop_per_sample": result["inference_gflop_per_sample"],
        "test_exact_match": result["exact_match"],
        "test_length_accuracy": result["length_accuracy"],
        "argv": result["argv"],
    }


def evaluate_with_views(shards: Path, result: dict, tta: int) -> dict:
    """One run's best model with test-time shifts, beside itself without them: val with and
    without the views (to choose on), test with them (without: the trainer's test_exact_match).
    Each figure is kept in the run folder, and a rerun over a --work-dir reads it back."""
    run = Path(result["run"])
    figures = {}
    for views, split in ((0, "val"), (tta, "val"), (tta, "test")):
        out = run / f"eval_{split}_shift{views}.json"
        figures[views, split] = (
            json.loads(out.read_text())
            if out.is_file()
            else run_evaluate(shards, [str(run)], views, split, out)
        )
    return {
        "tta_shift": tta,
        "tta_views": figures[tta, "test"]["tta_views"],
        "inference_gflop_per_sample": figures[tta, "test"]["inference_gflop_per_sample"],
        "val_exact_match_plain": figures[0, "val"]["exact_match"],
        "val_exact_match": figures[tta, "val"]["exact_match"],
        "test_exact_match": figures[tta, "test"]["exact_match"],
        "test_length_accuracy": figures[tta, "test"]["length_accuracy"],
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
        results, summaries, ensembles, ledger_checks = [], [], [], []
        for name in args.recipes:
            if name == SEED_BASELINE:
                results.append(train_seed_baseline(args))
                continue
            # seed-major: an interrupted study still has every count of its first seeds
            seeds, counts = zip(
                *[(s, n) for s in args.seeds or [None] for n in args.processes], strict=True
            )
            with ThreadPoolExecutor(max_workers=args.parallel) as pool:
                runs = list(
                    pool.map(partial(train, args, shards, work / "runs", name), seeds, counts)
                )
            if args.seeds and args.tta_shift is not None:
                for run in runs:
                    run["views"] = evaluate_with_views(shards, run, args.tta_shift)
            results += runs
            if args.ledger:
                ledger_checks += compare_ledgers(runs)
            for processes in args.processes:
                group = [r for r in runs if r["processes"] == processes]
                if args.seeds:
                    summaries.append(seed_summary(group))
                if args.seeds and args.ensemble_tta is not None:
                    suffix = f"_{processes}proc" if processes > 1 else ""
                    out = work / f"{name}{suffix}_ensemble.json"
                    ensembles.append(evaluate_ensemble(shards, group, args.ensemble_tta, out))

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print(
        f"target exact match {args.target} (val; the seed baseline: test); "
        f"{args.train_size} train samples/epoch; {device}"
    )
    print(f"{'recipe':<28} {'GFLOP/smp':>9} {'PFLOP':>7} {'epochs':>6} {'s to target':>11} "
          f"{'ep. to target':>13} {'best':>8} {'on':>5} {'test':>6} {'wall s':>7}")  # fmt: skip
    for r in results:
        name = r["recipe"] if r.get("seed") is None else f"{r['recipe']} seed {r['seed']}"
        name += f" x{r['processes']}" if r.get("processes", 1) > 1 else ""
        print(
            f"{name:<28} {r['gflop_per_train_sample']:>9.3f} "
            f"{fmt(r.get('train_pflop'), '.4f'):>7} {r['epochs_run']:>6} "
            f"{fmt(r['seconds_to_target'], '.1f'):>11} {fmt(r['epochs_to_target'], 'd'):>13} "
            f"{fmt(max(r['exact_match_per_epoch'], default=None), '.4f'):>8} "
            f"{r['target_split']:>5} "
            f"{fmt(r['test_exact_match'], '.4f'):>6} {fmt(r['wall_seconds'], '.1f'):>7}"
        )
    for summary in summaries:
        print(
            f"{summary['recipe']} on {summary['processes']} process(es): test exact match over "
            f"seeds {summary['seeds']}: mean "
            f"{fmt(summary['test_exact_match_mean'], '.4f')}, std "
            f"{fmt(summary['test_exact_match_std'], '.4f')}, min "
            f"{fmt(summary['test_exact_match_min'], '.4f')}"
        )
    for check in ledger_checks:
        print(
            f"{check['recipe']} seed {check['seed']}: ledgers of {check['processes'][0]} and "
            f"{check['processes'][1]} processes ({check['steps'][1]} steps) "
            f"{'identical' if check['identical'] else 'DIFFER'}"
        )
    for summary in summaries:
        if "views" in summary:
            views = summary["views"]
            print(
                f"{summary['recipe']}: with {views['tta_views']} views per model: val mean "
                f"{views['val_exact_match_mean']:.4f} (without: "
                f"{views['val_exact_match_plain_mean']:.4f}), test mean "
                f"{views['test_exact_match_mean']:.4f}, std "
                f"{fmt(views['test_exact_match_std'], '.4f')}"
            )
    for ensemble in ensembles:
        print(
            f"{ensemble['recipe']}: ensemble of {len(ensemble['members'])} x "
            f"{ensemble['tta_views']} views: test exact match {ensemble['test_exact_match']:.4f}, "
            f"training {ensemble['train_pflop']:.4f} PFLOP, inference "
            f"{ensemble['inference_gflop_per_sample']:.3f} GFLOP/sequence"
        )
    record = {
        "bench": "time_to_accuracy",
        "cpu_model": cpu_name(),
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "target": args.target,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "test_size": args.test_size,
        "epochs": args.epochs,
        "budget_s": args.budget_s,
        "processes": args.processes,
        "generate_seconds": gen_seconds,
        "results": results,
        "seed_summaries": summaries,
        "ensembles": ensembles,
        "ledger_checks": ledger_checks,
    }
    emit_result(record, args.json_out)


if __name__ == "__main__":
    main()
