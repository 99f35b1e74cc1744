"""--report-to: the CSV file and TensorBoard's event files in the run folder, each step once even
after a kill and resume; a chosen tracker whose package is missing stops the run at once."""

from __future__ import annotations

import csv
import importlib.util
from collections import Counter
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqtrain.components.trackers import CSV_HEADER, CSVTracker
from support.training import kill_mid_second_epoch, resume_argv, run_in_process, run_to_end
from support.training import train_argv as tiny_argv

STEPS, EPOCHS = 4, 2


def csv_points(run: Path) -> list[tuple[int, str]]:
    with open(run / "train_log.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_HEADER
    return [(int(step), metric) for step, metric, _ in rows[1:]]


def steps_of(points: list[tuple[int, str]], metric: str) -> list[int]:
    return [step for step, name in points if name == metric]


def tensorboard_steps(run: Path, tag: str) -> list[int]:
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_csv_and_tensorboard_hold_every_logged_step(tiny_shards: Path, tmp_path: Path) -> None:
    run_in_process([*tiny_argv(tiny_shards, tmp_path, "run"), "--epochs", str(EPOCHS),
                    "--steps-per-epoch", str(STEPS), "--log-every", "1", "--wandb-mode",
                    "disabled", "--report-to", "csv,tensorboard"])  # fmt: skip
    run = tmp_path / "run"
    points = csv_points(run)
    every_step = list(range(1, EPOCHS * STEPS + 1))
    epoch_ends = [STEPS * e for e in range(1, EPOCHS + 1)]
    assert steps_of(points, "train/loss") == every_step
    assert steps_of(points, "train/lr") == every_step
    assert steps_of(points, "val/loss") == epoch_ends
    assert steps_of(points, "val/exact_match") == epoch_ends
    assert tensorboard_steps(run, "train/loss") == every_step
    assert tensorboard_steps(run, "val/exact_match") == epoch_ends
    assert not (run / "wandb").exists()


def test_killed_and_resumed_run_logs_each_step_once(tiny_shards: Path, tmp_path: Path) -> None:
    # Killed inside epoch 2, it resumes from a checkpoint older than the last step it logged:
    # the points after that checkpoint are logged again, and must not appear twice.
    argv = [*resume_argv(tiny_shards, tmp_path), "--log-every", "1",
            "--report-to", "csv,tensorboard"]  # fmt: skip
    run = tmp_path / "job"
    kill_mid_second_epoch(argv, run)
    run_to_end([*argv, "--resume", "auto"])
    points = csv_points(run)
    assert [p for p, n in Counter(points).items() if n > 1] == []
    assert steps_of(points, "train/loss") == list(range(1, 13))  # 2 epochs x 6 steps
    assert steps_of(points, "val/loss") == [6, 12]
    assert tensorboard_steps(run, "train/loss") == list(range(1, 13))
    assert tensorboard_steps(run, "val/loss") == [6, 12]


def test_a_resumed_csv_keeps_only_the_whole_rows_up_to_its_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "train_log.csv"
    log.write_text("step,metric,value\n1,train/loss,2.5\n2,train/loss,2.0\n3,train/loss,1.5\n"
                   "4,train/lo")  # a torn last row  # fmt: skip
    tracker = CSVTracker(log)
    tracker.resume_step = 2
    tracker.start()
    tracker.log({"train/loss": 1.25, "note": "text is not a point"}, step=3)
    tracker.log({"val/loss": 9.0}, step=2)  # already logged by the earlier segment
    tracker.finish()
    assert log.read_text() == "step,metric,value\n1,train/loss,2.5\n2,train/loss,2.0\n" \
        "3,train/loss,1.25\n"  # fmt: skip


def test_tensorboard_chosen_but_not_installed_is_a_one_line_error(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real_find_spec = importlib.util.find_spec
    missing = {"tensorboard", "tensorboardX"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in missing else real_find_spec(name, *a),
    )
    with pytest.raises(SystemExit) as exit_info:
        run_in_process([*tiny_argv(tiny_shards, tmp_path, "run"), "--report-to", "tensorboard"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "seqtrain: error: --report-to tensorboard needs the tensorboard package "
        '(install seqtrain with its [tensorboard] extra: pip install ".[tensorboard]"); '
        "or leave it out of --report-to"
    )
    assert not (tmp_path / "run").exists()


WINDOW_ERROR = "--profile-steps must be A:B, global steps with 1 <= A <= B; got"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--report-to", "wandb,mlflow"], "--report-to takes wandb, tensorboard, csv; got mlflow"),
        (["--profile-steps", "5:3"], f"{WINDOW_ERROR} '5:3'"),
        (["--profile-steps", "x:y"], f"{WINDOW_ERROR} 'x:y'"),
    ],
)
def test_bad_tracker_or_profile_flags_are_one_line_errors(
    tiny_shards: Path, tmp_path: Path, capsys, flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_in_process([*tiny_argv(tiny_shards, tmp_path, "run"), *flags])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"seqtrain: error: {message}"
