"""`seqtrain report RUN`: the pictures exist and show the run's numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqtrain.cli import main
from seqtrain.components.run_paths import METRICS as METRICS_NAME
from seqtrain.components.run_paths import TEST_METRICS as TEST_NAME
from seqtrain.report import (
    CONFUSION_PNG,
    CURVES_PNG,
    LENGTH_PNG,
    confusion_figure,
    learning_curves_figure,
    length_accuracy_figure,
    lr_reductions,
    read_epochs,
)


def epochs_with_cuts() -> list[dict]:
    lrs = [1e-3, 1e-3, 1e-4, 1e-4, 1e-5]
    return [
        {
            "epoch": i + 1,
            "train_loss": 2.0 / (i + 1),
            "val_loss": 2.5 / (i + 1),
            "val_exact_match": 0.1 * i,
            "lr": lr,
            "best": i != 3,
        }
        for i, lr in enumerate(lrs)
    ]


def test_run_report_pictures(
    inference_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in (METRICS_NAME, TEST_NAME, "config.yaml"):
        shutil.copy(inference_run / name, run / name)
    main(["report", str(run)])
    for name in (CURVES_PNG, LENGTH_PNG, CONFUSION_PNG):
        with Image.open(run / name) as image:
            assert image.format == "PNG" and image.width > 300, name
    assert capsys.readouterr().out.splitlines() == [
        str(run / n) for n in (CURVES_PNG, LENGTH_PNG, CONFUSION_PNG)
    ]


def test_curves_show_the_metrics_and_mark_lr_cuts(inference_run: Path) -> None:
    epochs = read_epochs(inference_run)
    loss, exact, lr = learning_curves_figure(epochs).axes[:3]
    train_line, val_line = loss.get_lines()[:2]
    assert list(train_line.get_ydata()) == [e["train_loss"] for e in epochs]
    assert list(val_line.get_ydata()) == [e["val_loss"] for e in epochs]
    assert list(exact.get_lines()[0].get_ydata()) == [e["val_exact_match"] for e in epochs]
    assert list(lr.get_lines()[0].get_ydata()) == [e["lr"] for e in epochs]

    synthetic = epochs_with_cuts()
    assert lr_reductions(synthetic) == [3, 5]
    assert lr_reductions(synthetic, initial_lr=1e-2) == [1, 3, 5]
    lr_axes = learning_curves_figure(synthetic).axes[2]
    cut_lines = [line.get_xdata()[0] for line in lr_axes.get_lines()[1:]]
    assert cut_lines == [3, 5]
    assert [t.get_text() for t in lr_axes.texts] == ["LR cut", "LR cut"]


def test_length_and_confusion_show_the_test_numbers(inference_run: Path) -> None:
    test = json.loads((inference_run / TEST_NAME).read_text())
    bars = length_accuracy_figure(test).axes[0].patches
    assert [b.get_height() for b in bars] == [test["length_accuracy"][n] for n in "123"]
    figure = confusion_figure(test)
    shown = figure.axes[0].get_images()[0].get_array()
    assert np.allclose(shown, np.log1p(np.asarray(test["confusion"])))
    cells = {t.get_text() for t in figure.axes[0].texts}
    assert {str(v) for row in test["confusion"] for v in row if v} == cells


def test_unfinished_run_draws_curves_only(
    inference_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(inference_run / METRICS_NAME, tmp_path / METRICS_NAME)
    main(["report", str(tmp_path)])
    assert (tmp_path / CURVES_PNG).is_file() and not (tmp_path / CONFUSION_PNG).exists()
    assert "skipped" in capsys.readouterr().out


@pytest.mark.parametrize("content", [None, "", "{not json"])
def test_missing_or_bad_metrics_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    if content is not None:
        (tmp_path / METRICS_NAME).write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and METRICS_NAME in err, err
