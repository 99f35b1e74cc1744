"""One-process training runs through the real CLI entry point (tiny model, tiny shards)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqtrain.components.tracking import read_offline_run
from support.training import read_jsonl, run_in_process, train_argv


@pytest.fixture(scope="module")
def trained_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    run_in_process(train_argv(tiny_shards, out, "one", "--wandb-mode", "offline"))
    return out / "one"


def test_run_folder_holds_every_output(trained_run: Path) -> None:
    for name in ("config.yaml", "metrics.jsonl", "test_metrics.json", "predictions.png"):
        assert (trained_run / name).is_file(), name
    for checkpoint in ("best", "last"):
        assert (trained_run / "checkpoints" / checkpoint / "model.safetensors").is_file()
    assert not list((trained_run / "checkpoints").glob(".*")), "temporary folders left behind"


def test_loss_falls_and_accuracy_beats_chance(trained_run: Path, tiny_shards: Path) -> None:
    epochs = read_jsonl(trained_run / "metrics.jsonl")
    assert [e["epoch"] for e in epochs] == list(range(1, 9))
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert min(e["val_loss"] for e in epochs) < epochs[0]["val_loss"]
    test = json.loads((trained_run / "test_metrics.json").read_text())
    assert test["count"] == 250
    # Chance: 1/11 for the always-present first digit, ~1/1331 for a whole 3-digit sequence.
    # Over twice chance: seeds 0, 1, 2 of this tiny run reach 0.22, 0.29, 0.28.
    assert test["position_accuracy"][0] > 0.2
    assert test["exact_match"] > 0.05
    assert sum(map(sum, test["confusion"])) == 3 * test["count"]
    assert set(test["length_accuracy"]) == {"1", "2", "3"}


def test_saved_config_reruns_the_job(trained_run: Path, tiny_shards: Path) -> None:
    from seqtrain.common.cliparse import load_config
    from seqtrain.config import RunConfig

    cfg = load_config(RunConfig, trained_run / "config.yaml")
    assert cfg.model.model == "tiny"
    assert Path(cfg.data.shards) == tiny_shards
    assert cfg.train.run_name == "one"


def test_wandb_offline_run_reads_back(trained_run: Path) -> None:
    run = read_offline_run(trained_run / "wandb")
    assert run["config"]["model"] == "tiny"  # W&B config keys are the flags' field names
    assert run["config"]["lr"] == pytest.approx(1e-2)
    val_rows = [row for row in run["history"] if "val/loss" in row]
    epochs = read_jsonl(trained_run / "metrics.jsonl")
    assert [row["val/loss"] for row in val_rows] == pytest.approx([e["val_loss"] for e in epochs])
    assert any("train/samples_per_s" in row for row in run["history"])
    test = json.loads((trained_run / "test_metrics.json").read_text())
    assert run["summary"]["test/exact_match"] == pytest.approx(test["exact_match"])
    assert run["summary"]["test/count"] == 250
    assert [p.suffix for p in run["media"]] == [".png"]


def test_bf16_on_cpu_runs(tiny_shards: Path, tmp_path: Path) -> None:
    argv = train_argv(tiny_shards, tmp_path, "bf16", "--epochs", "1", "--wandb-mode", "disabled")
    run_in_process([*argv, "--mixed-precision", "bf16"])
    (epoch,) = read_jsonl(tmp_path / "bf16" / "metrics.jsonl")
    assert epoch["val_count"] == 250
    assert (tmp_path / "bf16" / "test_metrics.json").is_file()


def test_nan_loss_stops_with_one_line_and_keeps_checkpoint(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An absurd LR overflows the weights at step 1, so step 2's loss is NaN/inf; the checkpoint
    # saved after step 1 must stay the last one.
    argv = train_argv(tiny_shards, tmp_path, "nan", "--wandb-mode", "disabled", "--lr", "1e30")
    with pytest.raises(SystemExit) as exit_info:
        run_in_process([*argv, "--checkpoint-every", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("seqtrain: error: loss became NaN/inf at step ")
    bad_step = int(err.split("at step ")[1].split(";")[0])
    meta = json.loads(
        (tmp_path / "nan" / "checkpoints" / "last" / "seqtrain_checkpoint.json").read_text()
    )
    assert meta["step"] == bad_step - 1
