"""`python -m experiments.ensemble_select`: candidates are compared on val, only the chosen one
reaches test, and training compute is counted from run folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.ensemble_select import choose, parse_candidates, parse_member_pflop, within_budget
from experiments.time_to_accuracy import samples_trained
from seqtrain.models import build_model
from seqtrain.models.flops import flops_per_sample
from support import REPO


def run_select(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.ensemble_select", *args],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_chooses_on_val_and_reads_test_for_the_chosen_only(
    tiny_shards: Path, inference_run: Path, tmp_path: Path
) -> None:
    run = inference_run
    out = tmp_path / "select.json"
    done = run_select(
        "--shards", str(tiny_shards), "--candidate", f"one={run}",
        "--candidate", f"twice={run},{run}", "--tta-shift", "0", "1", "--parallel", "2",
        "--json-out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    figures = record["candidates"]
    assert [(f["candidate"], f["tta_shift"]) for f in figures] == [
        ("one", 0), ("one", 1), ("twice", 0), ("twice", 1),
    ]  # fmt: skip
    by = {(f["candidate"], f["tta_shift"]): f for f in figures}
    # The same model twice averages to itself: equal val figures, twice the inference FLOPs.
    for shift in (0, 1):
        assert by["twice", shift]["val_exact_match"] == by["one", shift]["val_exact_match"]
        assert by["twice", shift]["inference_gflop_per_sample"] == pytest.approx(
            2 * by["one", shift]["inference_gflop_per_sample"]
        )
    assert by["one", 1]["tta_views"] == 5

    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    pflop = samples_trained(run, epochs) * flops_per_sample(lambda: build_model("tiny")) / 1e15
    assert by["one", 0]["train_pflop"] == pytest.approx(pflop)
    assert by["twice", 0]["train_pflop"] == pytest.approx(2 * pflop)

    chosen = record["chosen"]
    best = max(f["val_exact_match"] for f in figures)
    assert chosen["val_exact_match"] == best
    assert chosen["candidate"] == "one"  # ties go to the cheaper ensemble
    evaluated = subprocess.run(
        [sys.executable, "-m", "seqtrain", "evaluate", "--checkpoint", str(run),
         "--tta-shift", str(chosen["tta_shift"]), "--shards", str(tiny_shards),
         "--json", str(tmp_path / "test.json"), "--num-workers", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert (
        chosen["test_exact_match"]
        == json.loads((tmp_path / "test.json").read_text())["exact_match"]
    )


def test_candidates_join_earlier_ones_and_bad_specs_are_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    joined = parse_candidates([f"x={a}", f"y={a},{b}", "z=x+y"])
    assert joined["z"] == [str(a), str(a), str(b)]
    for specs, message in (
        ([f"x{a}"], "expected NAME=PATH"),
        ([f"x={a}", f"x={b}"], "given twice"),
        (["z=x+y"], "unknown candidates"),
        ([f"x={tmp_path / 'missing'}"], "not folders"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_candidates(specs)
    assert parse_member_pflop([f"{a}=0.038"]) == {str(a): 0.038}
    for spec in (f"{a}", f"{a}=x", f"{a}=-1", "=0.1"):
        with pytest.raises(ValueError, match="expected PATH=PFLOP"):
            parse_member_pflop([spec])


def test_bad_input_is_one_line_usage_error(tmp_path: Path) -> None:
    done = run_select("--shards", str(tmp_path), "--candidate", f"x={tmp_path}")
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith(f"--shards {tmp_path}: no manifest.json there")
    )
    assert "Traceback" not in done.stderr


def test_select_by_loss_and_the_compute_budget() -> None:
    def figure(name: str, em: float, loss: float, gflop: float) -> dict:
        return {
            "candidate": name,
            "val_exact_match": em,
            "val_loss": loss,
            "inference_gflop_per_sample": gflop,
        }

    sharp = figure("sharp", 0.990, 0.030, 1.0)
    lucky = figure("lucky", 0.991, 0.034, 1.0)
    cheap_twin = figure("cheap", 0.990, 0.030, 0.5)
    assert choose([sharp, lucky])["candidate"] == "lucky"
    assert choose([sharp, lucky], "loss")["candidate"] == "sharp"
    assert choose([sharp, cheap_twin, lucky], "loss")["candidate"] == "cheap"

    candidates = {"small": ["a"], "big": ["a", "b"], "unknown": ["c"]}
    pflops = {"small": [0.4], "big": [0.4, 0.5], "unknown": [None]}
    assert within_budget(candidates, pflops, 0.87) == {"small": ["a"]}
