"""`python -m experiments.time_to_accuracy` runs end to end on tiny sizes: the seed baseline and
a recipe file (`seqtrain train --config recipes/NAME.yaml`) on the same sizes, and a --work-dir
rerun reads a finished recipe back instead of retraining it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO


def run_record(mnist_dir: Path, work: Path, out: Path, *extra: str) -> dict:
    argv = [
        sys.executable, "-m", "experiments.time_to_accuracy", "--mnist-dir", str(mnist_dir),
        "--train-size", "256", "--val-size", "128", "--test-size", "128", "--epochs", "1",
        "--target", "0.0", "--budget-s", "300", "--work-dir", str(work), "--json-out", str(out),
        *extra,
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.splitlines()[-1])
    assert json.loads(out.read_text()) == record
    return record


def run_recipes(mnist_dir: Path, work: Path, out: Path) -> dict:
    record = run_record(mnist_dir, work, out, "--recipes", "seed_baseline", "slotnet_onecycle")
    return {r["recipe"]: r for r in record["results"]}


def test_seeds_are_summarised_and_evaluated_as_one_ensemble(mnist_dir, tmp_path):
    record = run_record(
        mnist_dir, tmp_path / "work", tmp_path / "out.json",
        "--recipes", "slotnet_onecycle", "--seeds", "0", "1", "--ensemble-tta", "1",
        "--parallel", "2", "--tta-shift", "1",
    )  # fmt: skip
    runs = record["results"]  # trained at once, reported in seed order
    assert [r["seed"] for r in runs] == [0, 1]
    recipe = str(REPO / "recipes" / "slotnet_onecycle.yaml")
    for seed, run in enumerate(runs):
        assert run["run"].endswith(f"slotnet_onecycle_seed{seed}")
        assert run["argv"][:4] == ["seqtrain", "train", "--config", recipe]
        assert run["batch_size"] == 128  # the recipe's (the default): what device_check reads
        assert run["argv"][-4:-2] == ["--seed", str(seed)]
    for run in runs:  # 256 samples at batch 128: 2 steps
        assert run["train_samples"] == 256
        assert run["train_pflop"] == run["train_samples"] * run["gflop_per_train_sample"] / 1e6
    (summary,) = record["seed_summaries"]
    tests = [r["test_exact_match"] for r in runs]
    assert summary["test_exact_match"] == tests
    assert summary["test_exact_match_mean"] == sum(tests) / 2
    (ensemble,) = record["ensembles"]
    assert ensemble["members"] == [r["run"] for r in runs]
    assert ensemble["tta_views"] == 5
    assert ensemble["train_pflop"] == sum(r["train_pflop"] for r in runs)
    forward_gflop = runs[0]["gflop_per_train_sample"] / 3
    assert ensemble["inference_gflop_per_sample"] == pytest.approx(2 * 5 * forward_gflop)
    assert 0.0 <= ensemble["test_exact_match"] <= 1.0

    for run in runs:  # each seed's best model, also with shifted views
        views = run["views"]
        assert views["tta_views"] == 5
        assert views["inference_gflop_per_sample"] == pytest.approx(5 * forward_gflop)
        # without views, the evaluated val figure is the tested (lowest val loss) epoch's (the
        # same checkpoint; one sequence of 128 may differ where training validated in bf16)
        assert run["best_epoch"] == 1
        assert run["val_exact_match_at_best"] == run["exact_match_per_epoch"][0]
        assert abs(views["val_exact_match_plain"] - run["val_exact_match_at_best"]) <= 1 / 128
        assert 0.0 <= views["val_exact_match"] <= 1.0 and 0.0 <= views["test_exact_match"] <= 1.0
        kept = json.loads((Path(run["run"]) / "eval_test_shift1.json").read_text())
        assert kept["exact_match"] == views["test_exact_match"]  # what a rerun reads back
    summary_views = summary["views"]
    assert summary_views["test_exact_match"] == [r["views"]["test_exact_match"] for r in runs]
    assert summary_views["val_exact_match_mean"] == pytest.approx(
        sum(r["views"]["val_exact_match"] for r in runs) / 2
    )
    assert summary["val_exact_match_at_best_mean"] == pytest.approx(
        sum(r["val_exact_match_at_best"] for r in runs) / 2
    )


def test_each_seed_trains_on_each_process_count_with_one_ledger(mnist_dir, tmp_path):
    record = run_record(
        mnist_dir, tmp_path / "work", tmp_path / "out.json",
        "--recipes", "deep_onecycle_g128", "--seeds", "0", "--processes", "1", "2", "--ledger",
    )  # fmt: skip
    one, two = record["results"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["run"].endswith("deep_onecycle_g128_seed0")
    assert two["run"].endswith("deep_onecycle_g128_seed0_2proc")
    assert one["argv"][:2] == ["seqtrain", "train"]
    assert two["argv"][:5] == ["accelerate", "launch", "--multi_gpu", "--num_processes", "2"]
    for run in (one, two):  # 256 samples at a global batch of 128: 2 steps x 2 epochs
        assert run["finished"] and run["train_samples"] == 512
    assert [s["processes"] for s in record["seed_summaries"]] == [1, 2]
    (check,) = record["ledger_checks"]
    assert check["identical"] and check["processes"] == [1, 2]
    assert check["steps"] == [4, 4] and check["samples_per_step"] == [128]


def test_ledgers_that_differ_in_one_sample_are_reported(tmp_path):
    from experiments.time_to_accuracy import compare_ledgers

    def ledger(run: str, ranks: list[list[int]]) -> dict:
        folder = tmp_path / f"{run}.ledger"
        folder.mkdir()
        for rank, samples in enumerate(ranks):
            line = {"epoch": 0, "batch": 0, "samples": samples}
            (folder / f"rank{rank}.jsonl").write_text(json.dumps(line) + "\n")
        return {"recipe": "r", "seed": 0, "processes": len(ranks), "run": str(tmp_path / run)}

    one = ledger("one", [[0, 1, 2, 3]])
    same, swapped = ledger("same", [[0, 1], [2, 3]]), ledger("swapped", [[0, 1], [3, 2]])
    assert [c["identical"] for c in compare_ledgers([one, same, swapped])] == [True, False]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--parallel", "--parallel must be >= 1, got 0"),
        ("--tta-shift", "--tta-shift must be >= 1, got 0"),
        ("--processes", "--processes must be >= 1, got 0"),
    ],
)
def test_counts_below_one_are_usage_errors(flag, message):
    done = subprocess.run(
        [sys.executable, "-m", "experiments.time_to_accuracy", flag, "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(message)


def test_time_to_accuracy_runs_baseline_and_recipe_and_reads_finished_runs_back(
    mnist_dir, tmp_path
):
    first = run_recipes(mnist_dir, tmp_path / "work", tmp_path / "first.json")
    seed, ours = first["seed_baseline"], first["slotnet_onecycle"]
    for result, split in ((seed, "test"), (ours, "val")):
        assert result["finished"] and result["epochs_run"] == 1
        assert result["target_split"] == split
        assert 0.0 <= result["exact_match_per_epoch"][0] <= 1.0
        assert result["epochs_to_target"] == 1  # target 0: reached after the first epoch
        assert result["seconds_to_target"] > 0
    assert seed["gflop_per_train_sample"] > 3 * ours["gflop_per_train_sample"]
    assert (tmp_path / "work" / "runs" / "slotnet_onecycle" / "test_metrics.json").exists()

    again = run_recipes(mnist_dir, tmp_path / "work", tmp_path / "again.json")
    kept = again["slotnet_onecycle"]
    assert kept["wall_seconds"] is None  # read back, not retrained
    assert kept["exact_match_per_epoch"] == ours["exact_match_per_epoch"]
    assert kept["test_exact_match"] == ours["test_exact_match"]


def test_budget_kill_takes_the_whole_process_group(tmp_path):
    # A recipe killed at its budget must not leave its loader workers running: here a child that
    # records its pid and sleeps stands for one.
    import os
    import time

    from experiments.time_to_accuracy import run_budgeted

    pid_file = tmp_path / "child.pid"
    child = f"import os,time; open({str(pid_file)!r},'w').write(str(os.getpid())); time.sleep(120)"
    parent = (
        "import subprocess,sys,time; print('started', flush=True); "
        f"subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(120)"
    )
    finished, wall, stdout = run_budgeted([sys.executable, "-c", parent], budget_s=5)
    assert not finished and wall < 60 and stdout == "started\n"
    child_pid = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"child {child_pid} outlived the budget kill")
