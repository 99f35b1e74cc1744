"""Checkpoints users expect: the K most recent epoch checkpoints beside best and last
(--keep-checkpoints), pruned oldest first and surviving a crash mid-pruning; best (and early
stopping) by the chosen --best-metric, which a resume may not change unnoticed."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

import seqtrain.train
from seqtrain.components.checkpoint import find_checkpoint
from seqtrain.components.checkpoint_history import kept_epoch_checkpoints
from seqtrain.components.run_paths import RunPaths
from seqtrain.components.schedules import EarlyStopping
from support.training import epoch_of, read_jsonl, run_in_process, train_argv


def kept_argv(shards: Path, out: Path, *extra: str) -> list[str]:
    """Four 2-step epochs named `job`, the last two epoch checkpoints kept (W&B off)."""
    return train_argv(shards, out, "job", "--wandb-mode", "disabled", "--epochs", "4",
                      "--steps-per-epoch", "2", "--eval-batch-size", "250",
                      "--keep-checkpoints", "2", *extra)  # fmt: skip


def assert_keeps_exactly(checkpoints: Path, epochs: list[int]) -> None:
    """Only best, last and the named epochs' complete checkpoints: no leftovers of any kind."""
    names = [f"epoch-{epoch:04d}" for epoch in epochs]
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(["best", "last", *names])
    for name, epoch in zip(names, epochs, strict=True):
        assert epoch_of(checkpoints / name) == epoch


@pytest.fixture(scope="module")
def kept_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kept")
    run_in_process(kept_argv(tiny_shards, out))
    return out / "job"


def test_the_k_most_recent_epochs_are_kept_sharing_last_files(kept_run: Path) -> None:
    checkpoints = kept_run / "checkpoints"
    assert_keeps_exactly(checkpoints, [3, 4])
    # The newest epoch checkpoint is `last` itself, by hard links: no second copy on disk.
    assert (checkpoints / "last" / "model.safetensors").samefile(
        checkpoints / "epoch-0004" / "model.safetensors"
    )


def test_a_crash_mid_pruning_is_finished_by_the_next_save(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The power goes while epoch 3's save deletes epoch 1: half its files are gone, its record
    is not. It is never taken for a checkpoint; `--resume auto` continues from `last` (epoch 3)
    and epoch 4's save leaves exactly epochs 3 and 4."""
    real_rmtree = shutil.rmtree

    def power_cut(path: str | os.PathLike, ignore_errors: bool = False, **kwargs) -> None:
        if Path(path).name == ".pruning" and not ignore_errors:  # the deletion, not a cleanup
            (Path(path) / "epoch-0001" / "model.safetensors").unlink()
            raise RuntimeError("power cut")
        real_rmtree(path, ignore_errors=ignore_errors, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", power_cut)
    argv = kept_argv(tiny_shards, tmp_path)
    with pytest.raises(RuntimeError, match="power cut"):
        run_in_process(argv)
    monkeypatch.undo()

    paths = RunPaths(tmp_path / "job")
    assert epoch_of(paths.last) == 3
    assert (paths.checkpoints / ".pruning" / "epoch-0001" / "seqtrain_checkpoint.json").is_file()
    assert find_checkpoint(paths.epoch_checkpoint(1)) is None
    assert kept_epoch_checkpoints(paths, 3, 2) == [paths.epoch_checkpoint(2),
                                                    paths.epoch_checkpoint(3)]  # fmt: skip

    run_in_process([*argv, "--resume", "auto"])
    assert [record["epoch"] for record in read_jsonl(paths.metrics)] == [1, 2, 3, 4]
    assert_keeps_exactly(paths.checkpoints, [3, 4])


# Scripted val summaries: the loss improves every epoch, the exact match peaks at epoch 2.
VAL_LOSS = [1.0, 0.8, 0.6, 0.4, 0.2, 0.1]
VAL_EXACT_MATCH = [0.1, 0.6, 0.2, 0.3, 0.4, 0.5]


def scripted_val(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's val evaluation reports the scripted values (it still evaluates for real)."""
    real_evaluate = seqtrain.train.evaluate
    epochs = iter(range(len(VAL_LOSS)))

    def evaluate(run, split: str, model=None) -> dict:
        metrics = real_evaluate(run, split, model)
        if split == "val":
            epoch = next(epochs)
            metrics.update(loss=VAL_LOSS[epoch], exact_match=VAL_EXACT_MATCH[epoch])
        return metrics

    monkeypatch.setattr(seqtrain.train, "evaluate", evaluate)


@pytest.mark.parametrize(("metric", "best_epoch", "epochs_run"),
                         [("val_exact_match", 2, 4), ("val_loss", 6, 6)])  # fmt: skip
def test_best_metric_picks_best_and_early_stopping(
    metric: str,
    best_epoch: int,
    epochs_run: int,
    tiny_shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exact match: higher is better; best holds its highest epoch, and 2 epochs without a
    higher one stop the run, although the val loss still falls."""
    scripted_val(monkeypatch)
    run_in_process(train_argv(tiny_shards, tmp_path, "job", "--wandb-mode", "disabled",
                              "--epochs", "6", "--steps-per-epoch", "1",
                              "--eval-batch-size", "250", "--early-stop-patience", "2",
                              "--best-metric", metric))  # fmt: skip
    records = read_jsonl(tmp_path / "job" / "metrics.jsonl")
    assert len(records) == epochs_run
    assert epoch_of(tmp_path / "job" / "checkpoints" / "best") == best_epoch
    assert [r["epoch"] for r in records if r["best"]][-1] == best_epoch
    assert records[best_epoch - 1]["val_exact_match"] == VAL_EXACT_MATCH[best_epoch - 1]


def test_resume_with_another_best_metric_is_refused_without_accept_changes(
    kept_run: Path, tiny_shards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = kept_argv(tiny_shards, kept_run.parent, "--resume", "auto",
                     "--best-metric", "val_exact_match")  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(argv)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--best-metric val_loss -> val_exact_match" in line
    assert "--accept-changes" in line


def test_early_stopping_state_of_older_checkpoints_loads() -> None:
    """Checkpoints from before --best-metric hold a val-loss record without its metric's name:
    it continues under val_loss, and an accepted switch to exact match starts afresh."""
    old_state = {"best": 0.25, "bad_epochs": 3}
    by_loss = EarlyStopping(patience=5)
    by_loss.load_state_dict(old_state)
    assert (by_loss.best, by_loss.bad_epochs) == (0.25, 3)
    by_match = EarlyStopping(patience=5, metric="val_exact_match")
    by_match.load_state_dict(old_state)
    assert (by_match.best, by_match.bad_epochs) == (-math.inf, 0)
    assert by_match.update({"loss": 9.0, "exact_match": 0.0})
