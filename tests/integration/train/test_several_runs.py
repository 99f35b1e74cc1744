"""Several runs as one question: `seqtrain train --seeds` trains a run per seed (resumable, the
finished ones skipped) and `seqtrain report RUN1 RUN2 ...` compares runs in one picture and
tables whose numbers are the runs' own, seeds grouped with mean and std."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
from functools import partial
from pathlib import Path

import pytest
import yaml
from PIL import Image

from seqtrain.cli import main
from seqtrain.compare import CURVES_PNG, GROUPS_CSV, RUNS_CSV, TABLES_MD, curves_figure, read_groups
from seqtrain.components.run_summary import summarize
from seqtrain.models import build_model
from seqtrain.models.flops import flops_per_sample
from support.distributed import cpu_env, launch_argv
from support.training import read_jsonl, run_in_process, train_argv

BATCH = 16  # train_argv's --batch-size
SHORT = ("--epochs", "2", "--steps-per-epoch", "3", "--wandb-mode", "disabled")


def seeds_argv(shards: Path, out: Path, *extra: str) -> list[str]:
    return train_argv(shards, out, "job", "--seeds", "0", "1", *SHORT, *extra)


@pytest.fixture(scope="module")
def runs(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`--seeds 0 1` as `job`, and `other`: one run of another --lr (read-only)."""
    out = tmp_path_factory.mktemp("several-runs")
    run_in_process(seeds_argv(tiny_shards, out))
    run_in_process(train_argv(tiny_shards, out, "other", "--lr", "5e-3", *SHORT))
    return out


def test_seeds_train_one_complete_run_each(runs: Path) -> None:
    first, second = runs / "job-seed0", runs / "job-seed1"
    for run, seed in ((first, 0), (second, 1)):
        train = yaml.safe_load((run / "config.yaml").read_text())["train"]
        assert (train["seed"], train["seeds"], train["run_name"]) == (seed, [], run.name)
        assert (run / "test_metrics.json").is_file() and len(read_jsonl(run / "metrics.jsonl")) == 2
    # Another seed, another model: the losses differ.
    assert read_jsonl(first / "metrics.jsonl") != read_jsonl(second / "metrics.jsonl")


def test_seeds_rerun_skips_complete_runs_and_resumes_the_other(
    runs: Path, tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A copy, so the module's runs stay as trained; seed 1 "stopped" before its test.
    out = tmp_path / "runs"
    for name in ("job-seed0", "job-seed1"):
        shutil.copytree(runs / name, out / name, symlinks=True)
    (out / "job-seed1" / "test_metrics.json").unlink()
    finished = (out / "job-seed0" / "test_metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    run_in_process(seeds_argv(tiny_shards, out, "--resume", "auto"))
    printed = capsys.readouterr().out
    assert f"seed 0: {out / 'job-seed0'} is complete, skipped" in printed
    assert "seed 1:" not in printed and f"resumed from {out / 'job-seed1'}" in printed
    assert (out / "job-seed0" / "test_metrics.json").stat().st_mtime_ns == finished
    assert (out / "job-seed1" / "test_metrics.json").is_file()
    assert len(read_jsonl(out / "job-seed1" / "metrics.jsonl")) == 2  # no epoch trained again
    # It ends with the group's table: both runs, one group with its mean.
    assert "| job-seed0 | job |" in printed and "| job-seed1 | job |" in printed
    assert "| job | 2 |" in printed


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_ranks_take_the_same_seeds(runs: Path, tiny_shards: Path, tmp_path: Path) -> None:
    # Seed 0 is complete (skipped on both ranks together), seed 1 is trained by both.
    shutil.copytree(runs / "job-seed0", tmp_path / "job-seed0", symlinks=True)
    argv = seeds_argv(tiny_shards, tmp_path, "--resume", "auto")
    done = subprocess.run([*launch_argv(), *argv], env=cpu_env(), capture_output=True,
                          text=True, timeout=240, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "job-seed1" / "ranks" / f"{i}.json").read_text())
             for i in range(2)]  # fmt: skip
    assert [(r["process_index"], r["num_processes"]) for r in ranks] == [(0, 2), (1, 2)]
    assert read_jsonl(tmp_path / "job-seed0" / "metrics.jsonl") == read_jsonl(
        runs / "job-seed0" / "metrics.jsonl"
    )
    # The main process alone reports: one skip line, one table.
    assert done.stdout.count("seed 0:") == 1 and done.stdout.count("| job-seed1 | job |") == 1


def test_report_of_several_runs_writes_their_numbers(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "compared"
    main(["report", str(runs / "*"), "--out", str(out)])  # a quoted glob: all three runs

    rows = {row["run"]: row for row in _csv(out / RUNS_CSV)}
    assert sorted(rows) == ["job-seed0", "job-seed1", "other"]
    per_sample = flops_per_sample(partial(build_model, "tiny"))  # equal lengths in tiny_shards
    for name, row in rows.items():
        epochs = read_jsonl(runs / name / "metrics.jsonl")
        test = json.loads((runs / name / "test_metrics.json").read_text())
        samples = epochs[-1]["step"] * BATCH  # one process
        assert _floats(row) == pytest.approx({
            "epochs": 2, "processes": 1,
            "final_val_loss": epochs[-1]["val_loss"],
            "final_val_exact_match": epochs[-1]["val_exact_match"],
            "best_val_loss": min(e["val_loss"] for e in epochs),
            "best_val_exact_match": max(e["val_exact_match"] for e in epochs),
            "test_exact_match": test["exact_match"],
            "train_seconds": sum(e["epoch_seconds"] for e in epochs),
            "samples_trained": samples, "train_flops": samples * per_sample,
        })  # fmt: skip
    # The seeds form one group, the other --lr its own, each labelled by the setting.
    assert rows["job-seed0"]["group"] == rows["job-seed1"]["group"] == "lr=0.01"
    assert rows["other"]["group"] == "lr=0.005"

    groups = {row["group"]: row for row in _csv(out / GROUPS_CSV)}
    seeds = [_floats(rows["job-seed0"]), _floats(rows["job-seed1"])]
    assert groups["lr=0.01"]["runs"] == "2"
    for key in ("final_val_loss", "test_exact_match", "train_seconds", "train_flops"):
        values = [s[key] for s in seeds]
        assert float(groups["lr=0.01"][f"{key}_mean"]) == pytest.approx(statistics.fmean(values))
        assert float(groups["lr=0.01"][f"{key}_std"]) == pytest.approx(statistics.stdev(values))
    assert groups["lr=0.005"]["runs"] == "1" and groups["lr=0.005"]["test_exact_match_std"] == ""

    markdown = (out / TABLES_MD).read_text()
    assert "| job-seed1 | lr=0.01 |" in markdown and "| lr=0.01 | 2 |" in markdown
    with Image.open(out / CURVES_PNG) as image:
        assert image.format == "PNG" and image.width > 300


def test_curves_overlay_every_run_coloured_by_group(runs: Path) -> None:
    epochs, groups = read_groups([runs / "job-seed0", runs / "job-seed1", runs / "other"])
    train_loss, val_loss, exact = curves_figure(groups, lambda s: epochs[s.run]).axes[:3]
    for axes, field in ((train_loss, "train_loss"), (val_loss, "val_loss"),
                        (exact, "val_exact_match")):  # fmt: skip
        lines = axes.get_lines()
        assert [list(line.get_ydata()) for line in lines] == [
            [e[field] for e in records] for records in epochs.values()
        ]
        colours = [line.get_color() for line in lines]
        assert colours[0] == colours[1] != colours[2]


def test_compute_without_the_manifest_says_how_it_counted(runs: Path, tmp_path: Path) -> None:
    run = tmp_path / "moved"
    shutil.copytree(runs / "job-seed0", run, symlinks=True)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["shards"] = str(tmp_path / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    summary = summarize(run, read_jsonl(run / "metrics.jsonl"))
    assert "equal length weights" in summary.note and str(tmp_path / "gone") in summary.note
    per_sample = flops_per_sample(partial(build_model, "tiny"), length_weights=(1.0, 1.0, 1.0))
    assert summary.train_flops == pytest.approx(summary.samples_trained * per_sample)


def test_a_folder_that_is_not_a_run_is_one_line(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes").mkdir()
    out = tmp_path / "compared"
    for argv in (
        [str(runs / "job-seed0"), str(tmp_path / "notes")],
        [str(runs / "job-seed0"), str(tmp_path / "no-such-*")],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["report", *argv, "--out", str(out)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and argv[1] in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--seeds", "0", "1"), "--seeds needs --run-name"),
        (("--seeds", "0", "0", "--run-name", "job"), "--seeds lists a seed twice"),
    ],
)
def test_seeds_flag_errors_are_one_line(
    extra: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _floats(row: dict[str, str]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k not in ("run", "group", "note")}
