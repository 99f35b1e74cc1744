"""`seqtrain evaluate`: one process and two processes give the same numbers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from seqtrain.data.format import load_manifest
from support.distributed import launch_argv
from support.inference import evaluate_argv
from support.training import run_in_process

COUNTERS = ("count", "exact_match", "position_accuracy", "length_accuracy", "length_count")


def test_one_process_matches_training_test_metrics(
    inference_run: Path, tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_in_process(evaluate_argv(inference_run, tiny_shards, tmp_path / "eval.json"))
    result = json.loads((tmp_path / "eval.json").read_text())
    trained = json.loads((inference_run / "test_metrics.json").read_text())
    for key in (*COUNTERS, "confusion"):
        assert result[key] == trained[key], key
    assert result["loss"] == pytest.approx(trained["loss"], rel=1e-6)
    assert (result["split"], result["model"], result["num_processes"]) == ("test", "tiny", 1)
    table = capsys.readouterr().out
    assert f"exact match         {result['exact_match']:.4f}" in table
    assert "confusion over all slots" in table


def test_two_processes_give_the_numbers_of_one(
    inference_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    run_in_process(evaluate_argv(inference_run, tiny_shards, tmp_path / "one.json"))
    launch = launch_argv()
    argv = evaluate_argv(inference_run, tiny_shards, tmp_path / "two.json")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launch, *argv], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["num_processes"] == 2
    assert two["count"] == load_manifest(tiny_shards).num_samples("test")
    for key in (*COUNTERS, "confusion"):
        assert two[key] == one[key], key
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-12)
    assert done.stdout.count("confusion over all slots") == 1, "only the main process prints"


def test_val_split_and_export_folder(
    inference_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    from seqtrain.export import export_model

    export_model(inference_run, tmp_path / "export")
    out = tmp_path / "val.json"
    run_in_process(evaluate_argv(tmp_path / "export", tiny_shards, out, "--split", "val"))
    result = json.loads(out.read_text())
    assert result["count"] == load_manifest(tiny_shards).num_samples("val")
    assert sum(map(sum, result["confusion"])) == 3 * result["count"]


def test_an_ensemble_of_one_model_twice_predicts_as_the_model(
    inference_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """Averaging equal softmaxes changes nothing but the cost; the loss is the mean softmax's
    cross-entropy, which for equal members is the model's own."""
    run_in_process(evaluate_argv(inference_run, tiny_shards, tmp_path / "one.json"))
    argv = evaluate_argv(inference_run, tiny_shards, tmp_path / "two.json", "--ensemble",
                         str(inference_run))  # fmt: skip
    run_in_process(argv)
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    for key in (*COUNTERS, "confusion"):
        assert two[key] == one[key], key
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
    assert two["ensemble"] == [one["checkpoint"]]
    assert two["inference_gflop_per_sample"] == pytest.approx(2 * one["inference_gflop_per_sample"])


def test_tta_shift_averages_over_shifted_views(
    inference_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    run_in_process(evaluate_argv(inference_run, tiny_shards, tmp_path / "one.json"))
    run_in_process(
        evaluate_argv(inference_run, tiny_shards, tmp_path / "tta.json", "--tta-shift", "1")
    )
    one = json.loads((tmp_path / "one.json").read_text())
    tta = json.loads((tmp_path / "tta.json").read_text())
    assert (one["tta_views"], tta["tta_views"]) == (1, 5)
    assert tta["inference_gflop_per_sample"] == pytest.approx(5 * one["inference_gflop_per_sample"])
    assert tta["count"] == one["count"]
    assert tta["loss"] != pytest.approx(one["loss"], rel=1e-6)  # other inputs were seen


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--split", "dev"], "dev"),
        (["--batch-size", "0"], "--batch-size must be > 0"),
        (["--checkpoint", "/nonexistent"], "/nonexistent does not exist"),
        (["--ensemble", "/nonexistent"], "/nonexistent does not exist"),
        (["--tta-shift", "-1"], "--tta-shift must be >= 0"),
    ],
)
def test_bad_input_is_one_line(
    inference_run: Path,
    tiny_shards: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(evaluate_argv(inference_run, tiny_shards, tmp_path / "x.json", *flags))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
