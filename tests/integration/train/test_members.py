"""`seqtrain train --members N`: N members trained as one stacked model equal N runs of their
seeds, and the run's outputs (per-member logs, bests, the ensemble export) read as ensembles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seqtrain.components.checkpoint import find_checkpoint
from seqtrain.components.tracking import read_offline_run
from seqtrain.export import ModelChoice, load_predictor
from support.training import read_jsonl, refusal, run_in_process, train_argv

SEEDS = (3, 5)


def _argv(shards: Path, out: Path, name: str, *extra: str) -> list[str]:
    """2 epochs of 3 steps of the narrow skip-blank net (BatchNorm, keyed dropout)."""
    return train_argv(shards, out, name, "--model", "slotnet_narrow_skipblank", "--epochs", "2",
                      "--steps-per-epoch", "3", "--eval-batch-size", "250", *extra)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One --members 2 run (W&B offline) and one run of each member's seed alone."""
    out = tmp_path_factory.mktemp("members")
    seeds = [str(seed) for seed in SEEDS]
    run_in_process(_argv(tiny_shards, out, "ensemble", "--members", "2", "--member-seeds", *seeds,
                         "--wandb-mode", "offline"))  # fmt: skip
    for seed in seeds:
        run_in_process(_argv(tiny_shards, out, f"seed{seed}", "--seed", seed,
                             "--wandb-mode", "disabled"))  # fmt: skip
    return out


def test_members_equal_runs_of_their_seeds(runs: Path) -> None:
    """Each member's weights and BatchNorm running statistics after the last step, and its val
    loss and exact match every epoch, are those of the run of its seed."""
    stacked = load_file(find_checkpoint(runs / "ensemble/checkpoints/last") / "model.safetensors")
    epochs = read_jsonl(runs / "ensemble/metrics.jsonl")
    for i, seed in enumerate(SEEDS):
        alone = runs / f"seed{seed}"
        own = load_file(find_checkpoint(alone / "checkpoints/last") / "model.safetensors")
        assert {f"members.{key}" for key in own} == set(stacked)
        for key, value in own.items():
            torch.testing.assert_close(stacked[f"members.{key}"][i], value, msg=key)
        assert any("running_var" in key for key in own)
        for together, single in zip(epochs, read_jsonl(alone / "metrics.jsonl"), strict=True):
            member = together["members"][i]
            assert member["val_loss"] == pytest.approx(single["val_loss"], rel=1e-4)
            assert member["val_exact_match"] == pytest.approx(single["val_exact_match"], abs=1e-9)


def test_member_metrics_in_wandb_and_test_is_the_ensemble(runs: Path) -> None:
    run = runs / "ensemble"
    logged = read_offline_run(run / "wandb")
    history = [row for row in logged["history"] if "val/member0/loss" in row]
    assert len(history) == 2 and all("val/member1/exact_match" in row for row in history)
    wanted = {"test/member0/exact_match", "test/member1/loss", "test/exact_match"}
    assert wanted <= set(logged["summary"])
    test = json.loads((run / "test_metrics.json").read_text())
    assert len(test["members"]) == 2


def test_export_is_an_ensemble_folder_that_predictors_read(runs: Path) -> None:
    """export/ holds each member's best (as the run of its seed exports it); evaluate and
    predict read it, and the run folder, as the ensemble of those members."""
    export = runs / "ensemble/export"
    assert json.loads((export / "ensemble.json").read_text())["members"] == ["member0", "member1"]
    for i, seed in enumerate(SEEDS):
        mine = load_file(export / f"member{i}/model.safetensors")
        theirs = load_file(runs / f"seed{seed}/export/model.safetensors")
        for key, value in theirs.items():
            torch.testing.assert_close(mine[key], value, msg=key)
    from_folder = load_predictor(ModelChoice(checkpoint=export))
    from_run = load_predictor(ModelChoice(checkpoint=runs / "ensemble"))
    explicit = load_predictor(ModelChoice(checkpoint=runs / f"seed{SEEDS[0]}",
                                          ensemble=[runs / f"seed{SEEDS[1]}"]))  # fmt: skip
    images = torch.rand(4, 1, 28, 84)
    with torch.no_grad():
        expected = explicit(images)
        torch.testing.assert_close(from_folder(images), expected)
        torch.testing.assert_close(from_run(images), expected)


def test_bad_member_flags_are_one_line_errors(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = train_argv(tiny_shards, tmp_path, "bad", "--members", "2")
    assert "--member-seeds" in refusal([*argv, "--member-seeds", "1"], capsys)
    assert "--sync-batchnorm on" in refusal([*argv, "--sync-batchnorm", "on"], capsys)
