"""Recipe options through the real CLI: --sched onecycle, --optimizer adamw, --stage-on-device,
and the model TFLOP/s logged per window."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqtrain.components.tracking import read_offline_run
from support.training import (
    assert_same_weights,
    kill_mid_second_epoch,
    read_jsonl,
    resume_argv,
    run_in_process,
    run_to_end,
    train_argv,
)

STEPS = ["--epochs", "3", "--steps-per-epoch", "6", "--log-every", "1"]


def test_onecycle_rises_to_the_peak_lr_then_falls(tiny_shards: Path, tmp_path: Path) -> None:
    argv = train_argv(tiny_shards, tmp_path, "cycle", *STEPS, "--sched", "onecycle")
    run_in_process([*argv, "--optimizer", "adamw", "--weight-decay", "0.01"])
    run = tmp_path / "cycle"
    assert (run / "test_metrics.json").is_file()
    history = read_offline_run(run / "wandb")["history"]
    lrs = [row["train/lr"] for row in history if "train/lr" in row]
    assert len(lrs) == 18  # one per step, each the LR of the next step
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1
    assert lrs[: peak + 1] == sorted(lrs[: peak + 1])
    assert lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert max(lrs) == pytest.approx(1e-2, rel=0.05)
    assert lrs[-1] == pytest.approx(1e-2 / 25 / 1e4)  # OneCycleLR defaults: div 25, final 1e4
    # CPU: achieved model TFLOP/s is logged, MFU is not (no known peak).
    assert all(row["train/tflops_job"] > 0 for row in history if "train/lr" in row)
    assert not any("train/mfu_per_device" in row for row in history)


def test_stage_on_device_runs_the_same_steps(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Epochs 2 and 3 were staged in the background while the one before trained, val from
    device memory: the same training and the same val scores as the streaming loaders'."""
    argv = train_argv(tiny_shards, tmp_path, "staged", "--epochs", "3", "--stage-on-device")
    run_in_process([*argv, "--wandb-mode", "disabled"])
    assert capsys.readouterr().out.count("each epoch is staged while the one before trains") == 1
    argv = train_argv(tiny_shards, tmp_path, "streamed", "--epochs", "3")
    run_in_process([*argv, "--wandb-mode", "disabled"])
    staged = read_jsonl(tmp_path / "staged" / "metrics.jsonl")
    streamed = read_jsonl(tmp_path / "streamed" / "metrics.jsonl")
    assert [e["step"] for e in staged] == [e["step"] for e in streamed] == [37, 74, 111]
    for key in ("train_loss", "val_loss", "val_exact_match"):
        assert [e[key] for e in staged] == [e[key] for e in streamed], key
    test = json.loads((tmp_path / "staged" / "test_metrics.json").read_text())
    assert test["exact_match"] > 0.05


@pytest.mark.slow
def test_onecycle_resume_after_kill_matches_uninterrupted_run(
    tiny_shards: Path, tmp_path: Path
) -> None:
    def argv(out: Path) -> list[str]:
        return [*resume_argv(tiny_shards, out), "--sched", "onecycle"]

    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    run_to_end(argv(unbroken))
    kill_mid_second_epoch(argv(broken), broken / "job")
    assert "at epoch 2, batch " in run_to_end([*argv(broken), "--resume", "auto"])
    for checkpoint in ("last", "best"):
        assert_same_weights(
            unbroken / "job" / "checkpoints" / checkpoint,
            broken / "job" / "checkpoints" / checkpoint,
        )
    lrs = [e["lr"] for e in read_jsonl(unbroken / "job" / "metrics.jsonl")]
    assert [e["lr"] for e in read_jsonl(broken / "job" / "metrics.jsonl")] == lrs


def test_fast_path_defaults_resolve_for_the_device(tiny_shards: Path, tmp_path: Path) -> None:
    # `--mixed-precision auto` must be saved as what it resolved to (fp32 on a CPU without
    # native bf16, like this one), and the channels-last default must train a model whose
    # convolution weights are channels-last.
    import torch
    import yaml

    from seqtrain.config import RunConfig
    from seqtrain.distributed import cpu_has_native_bf16, gpu_has_native_bf16, resolved_precision

    assert RunConfig().train.mixed_precision == "auto" and RunConfig().model.channels_last
    argv = train_argv(tiny_shards, tmp_path, "auto", "--epochs", "1", "--wandb-mode", "disabled")
    run_in_process(argv)
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    native_bf16 = gpu_has_native_bf16() if torch.cuda.is_available() else cpu_has_native_bf16()
    expected = "bf16" if native_bf16 else "no"
    assert saved["train"]["mixed_precision"] == expected == resolved_precision(RunConfig())
    assert saved["model"]["channels_last"] is True
    assert (tmp_path / "auto" / "test_metrics.json").is_file()


def test_compile_on_cpu_trains_and_exports_plain_weights(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from seqtrain.export import load_model

    argv = train_argv(tiny_shards, tmp_path, "compiled", "--epochs", "1", "--steps-per-epoch", "4")
    run_in_process([*argv, "--compile", "--no-channels-last", "--wandb-mode", "disabled"])
    assert "--compile skipped" not in capsys.readouterr().out  # g++ is present: it compiled
    model = load_model(tmp_path / "compiled")
    assert not any("_orig_mod" in key for key in model.state_dict())
    assert (tmp_path / "compiled" / "test_metrics.json").is_file()
