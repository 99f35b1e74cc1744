"""Scaling rule and schedules through the real trainer: --lr-scale's LR on one and two
processes, a warm-up into --sched cosine (and its exact resume), --clip-grad-norm's logged norm,
early stopping's default per schedule, and one-line errors for combinations that make no sense."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from seqtrain.components.tracking import read_offline_run
from support.distributed import cpu_env, launch_argv
from support.training import (
    assert_same_result,
    kill_mid_second_epoch,
    read_jsonl,
    resume_argv,
    run_in_process,
    run_to_end,
    train_argv,
)

LR = 1e-2  # train_argv's
SHORT = ["--epochs", "1", "--steps-per-epoch", "3", "--log-every", "1"]


def logged(run: Path, key: str) -> list[float]:
    """`key` at every logged step of the run's W&B offline history."""
    return [row[key] for row in read_offline_run(run / "wandb")["history"] if key in row]


@pytest.mark.parametrize(("rule", "factor"), [("linear", 0.5), ("sqrt", math.sqrt(0.5))])
def test_lr_scale_trains_at_the_rule_s_lr(
    rule: str, factor: float, tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # One process of batch 16 against a base of 32: half the batch --lr was tuned for.
    argv = train_argv(tiny_shards, tmp_path, "scaled", *SHORT, "--lr-scale", rule,
                      "--lr-base-batch", "32")  # fmt: skip
    run_in_process(argv)
    run, lr = tmp_path / "scaled", LR * factor
    assert f"LR {lr:.3g} = --lr 0.01 x " in capsys.readouterr().out
    assert logged(run, "train/lr") == pytest.approx([lr] * 3)
    assert read_offline_run(run / "wandb")["summary"]["effective_lr"] == pytest.approx(lr)
    assert json.loads((run / "ranks" / "0.json").read_text())["effective_lr"] == pytest.approx(lr)
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == LR  # the user's


def test_lr_scale_counts_the_samples_of_an_accumulated_step(
    tiny_shards: Path, tmp_path: Path
) -> None:
    # --global-batch-size 32 in micro-batches of 16: the optimizer steps with 32 samples.
    argv = train_argv(tiny_shards, tmp_path, "accumulated", *SHORT, "--wandb-mode", "disabled",
                      "--global-batch-size", "32", "--micro-batch-size", "16",
                      "--lr-scale", "linear", "--lr-base-batch", "16")  # fmt: skip
    run_in_process(argv)
    record = json.loads((tmp_path / "accumulated" / "ranks" / "0.json").read_text())
    assert record["effective_lr"] == pytest.approx(2 * LR)


@pytest.mark.multiprocess
def test_lr_scale_follows_the_global_batch_of_two_processes(
    tiny_shards: Path, tmp_path: Path
) -> None:
    argv = train_argv(tiny_shards, tmp_path, "two", "--wandb-mode", "disabled", *SHORT,
                      "--lr-scale", "linear", "--lr-base-batch", "16")  # fmt: skip
    done = subprocess.run([*launch_argv(), *argv], env=cpu_env(), capture_output=True, text=True,
                          timeout=240, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lr = LR * 2  # 2 processes x 16 against 16
    assert f"LR {lr:.3g} = --lr 0.01 x 32/16 (--lr-scale linear)" in done.stdout
    for rank in (0, 1):
        record = json.loads((tmp_path / "two" / "ranks" / f"{rank}.json").read_text())
        assert record["effective_lr"] == pytest.approx(lr)
    assert read_jsonl(tmp_path / "two" / "metrics.jsonl")[0]["lr"] == pytest.approx(lr)


def test_warmup_then_cosine_down_to_the_floor(tiny_shards: Path, tmp_path: Path) -> None:
    argv = train_argv(tiny_shards, tmp_path, "cosine", "--epochs", "2", "--steps-per-epoch", "5",
                      "--log-every", "1", "--sched", "cosine", "--warmup-steps", "3",
                      "--lr-floor", "0.1")  # fmt: skip
    run_in_process(argv)
    floor = 0.1 * LR
    # Logged after step k: the LR of step k + 1. Steps 1-3 warm up (LR/3, 2 LR/3, LR), the
    # cosine runs from step 4 (still LR) to the floor at step 10, the last.
    cosine = [floor + (LR - floor) * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(1, 7)]
    want = [2 * LR / 3, LR, LR, *cosine, floor]
    assert logged(tmp_path / "cosine", "train/lr") == pytest.approx(want)


@pytest.mark.slow
def test_cosine_resume_after_kill_matches_uninterrupted_run(
    tiny_shards: Path, tmp_path: Path
) -> None:
    def argv(out: Path) -> list[str]:
        return [*resume_argv(tiny_shards, out), "--sched", "cosine", "--warmup-steps", "4"]

    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    run_to_end(argv(unbroken))
    kill_mid_second_epoch(argv(broken), broken / "job")
    assert "at epoch 2, batch " in run_to_end([*argv(broken), "--resume", "auto"])
    assert_same_result(unbroken / "job", broken / "job")
    lrs = [e["lr"] for e in read_jsonl(unbroken / "job" / "metrics.jsonl")]
    assert [e["lr"] for e in read_jsonl(broken / "job" / "metrics.jsonl")] == lrs
    assert lrs[-1] == 0.0  # the default floor, reached at the last step


def test_clip_grad_norm_logs_the_norm_before_clipping(tiny_shards: Path, tmp_path: Path) -> None:
    """A tiny limit clips every step; a huge one clips none but logs the same first norm
    (the same first batch and weights), and the two runs' weights part."""
    for name, limit in (("tight", "1e-3"), ("loose", "1e9")):
        argv = train_argv(tiny_shards, tmp_path, name, *SHORT, "--clip-grad-norm", limit)
        run_in_process(argv)
    tight = logged(tmp_path / "tight", "train/grad_norm")
    loose = logged(tmp_path / "loose", "train/grad_norm")
    assert len(tight) == len(loose) == 3
    assert all(norm > 1e-3 for norm in tight)
    assert tight[0] == pytest.approx(loose[0])
    weights = [load_file(tmp_path / name / "checkpoints" / "last" / "model.safetensors")
               for name in ("tight", "loose")]  # fmt: skip
    assert any(not weights[0][key].equal(weights[1][key]) for key in weights[0])


def test_no_grad_norm_without_clipping(tiny_shards: Path, tmp_path: Path) -> None:
    run_in_process(train_argv(tiny_shards, tmp_path, "plain", *SHORT))
    assert logged(tmp_path / "plain", "train/grad_norm") == []


# The weights do not move at this LR: the val loss never improves after epoch 1.
FROZEN = ["--lr", "1e-12", "--epochs", "7", "--steps-per-epoch", "1", "--wandb-mode", "disabled"]


@pytest.mark.parametrize(("sched", "epochs", "patience"), [("plateau", 6, 5), ("onecycle", 7, 0)])
def test_early_stopping_default_follows_the_schedule(
    sched: str, epochs: int, patience: int, tiny_shards: Path, tmp_path: Path
) -> None:
    """plateau keeps the reference's patience 5 (1 best + 5 epochs without); a one-cycle run is
    never cut off mid-cycle by default: it trains every epoch down to its minimum LR."""
    run_in_process(train_argv(tiny_shards, tmp_path, sched, *FROZEN, "--sched", sched))
    run = tmp_path / sched
    assert len(read_jsonl(run / "metrics.jsonl")) == epochs
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["early_stop_patience"] == patience


BAD = {
    "both warm-ups": (["--warmup-steps", "2", "--warmup-epochs", "1"],
                      "--warmup-steps and --warmup-epochs exclude each other"),
    "warm-up with onecycle": (["--sched", "onecycle", "--warmup-epochs", "0.5"],
                              "do not apply to --sched onecycle"),
    "warm-up as long as the run": (["--warmup-steps", "3", *SHORT],
                                   "--warmup-steps: the warm-up (3 steps) must end before"),
    "unknown rule": (["--lr-scale", "cube"], "lr-scale"),
    "negative clip": (["--clip-grad-norm", "-1"], "--clip-grad-norm must be >= 0"),
    "floor of 1": (["--sched", "cosine", "--lr-floor", "1"], "--lr-floor must be in [0, 1)"),
    "negative patience": (["--early-stop-patience", "-1"], "--early-stop-patience must be >= 0"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_schedule_flags_are_one_line_errors(
    case: str, tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, expected = BAD[case]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_in_process([*train_argv(tiny_shards, tmp_path, "bad", "--wandb-mode", "disabled"),
                        *flags])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    line = err.rstrip().split("\r")[-1]
    assert line.startswith("seqtrain: error: ") and expected in line, line
    assert not (tmp_path / "bad").exists()  # refused before the run folder was claimed
