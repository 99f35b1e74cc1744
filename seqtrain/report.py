"""`seqtrain report RUN`: a run's numbers as pictures, for runs never synced to W&B.
(Several runs, `seqtrain report RUN1 RUN2 ...`, are compared by `seqtrain.compare`.)

From the files training writes in the run folder:

    metrics.jsonl      -> learning_curves.png   train/val loss, val exact match and LR per epoch,
                                                LR reductions marked
    test_metrics.json  -> length_accuracy.png   test exact match by sequence length
                       -> confusion.png         test confusion matrix over all slots

A run still training has no test_metrics.json yet: its curves are drawn, the rest skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from seqtrain.common.atomic import read_json_object
from seqtrain.common.errors import UserError
from seqtrain.compare import expand_runs, write_comparison
from seqtrain.components.plots import bare_figure, save_png
from seqtrain.components.run_files import read_epochs
from seqtrain.components.run_paths import TEST_METRICS, RunPaths
from seqtrain.export import class_names

CURVES_PNG = "learning_curves.png"
LENGTH_PNG = "length_accuracy.png"
CONFUSION_PNG = "confusion.png"
REDUCTION_COLOR = "tab:red"


@dataclass
class ReportConfig:
    """Draw a run's learning curves, accuracy by sequence length and test confusion matrix as
    PNG files in the run folder. Given several runs (or a quoted glob such as 'runs/job-seed*'),
    compare them instead: their curves in one picture and a table of each run's final and best
    val, test, seconds and compute, seeds of one recipe grouped with mean and std."""

    runs: tyro.conf.Positional[tuple[Path, ...]]
    """Run folders written by `seqtrain train` (each holds metrics.jsonl), or glob patterns."""
    out: Annotated[Path | None, tyro.conf.arg(metavar="DIR", help_behavior_hint="")] = None
    """Several runs only: the folder for compare_curves.png, compare_runs.csv, compare_groups.csv
    and compare.md (default: the current folder)."""

    def __post_init__(self) -> None:
        if not self.runs:
            raise UserError("name one or more run folders: seqtrain report RUN [RUN ...]")


def lr_reductions(epochs: list[dict], initial_lr: float | None = None) -> list[int]:
    """Epoch numbers after which the LR was lower than before (the plateau scheduler's cuts)."""
    before = [initial_lr] + [e["lr"] for e in epochs[:-1]]
    return [
        e["epoch"] for e, b in zip(epochs, before, strict=True) if b is not None and e["lr"] < b
    ]


def learning_curves_figure(epochs: list[dict], initial_lr: float | None = None) -> Figure:
    """Three panels over epochs: train and val loss, val exact match, LR (log scale).

    Vertical dotted lines on every panel mark the epochs whose end reduced the LR.
    """
    x = [e["epoch"] for e in epochs]
    figure = bare_figure(15, 4)
    loss, exact, lr = figure.subplots(1, 3)
    loss.plot(x, [e["train_loss"] for e in epochs], "o-", label="train")
    loss.plot(x, [e["val_loss"] for e in epochs], "o-", label="val")
    loss.set(title="loss", xlabel="epoch")
    loss.legend()
    exact.plot(x, [e["val_exact_match"] for e in epochs], "o-", color="tab:green", label="val")
    exact.set(title="val exact match", xlabel="epoch", ylim=(0, 1))
    lr.step(x, [e["lr"] for e in epochs], "o-", where="post", color="tab:purple", label="lr")
    lr.set(title="learning rate (after each epoch)", xlabel="epoch", yscale="log")
    for epoch in lr_reductions(epochs, initial_lr):
        for axes in (loss, exact, lr):
            axes.axvline(epoch, color=REDUCTION_COLOR, linestyle=":", linewidth=1)
        lr.annotate("LR cut", (epoch, epochs[x.index(epoch)]["lr"]), color=REDUCTION_COLOR)
    for axes in (loss, exact, lr):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    best = [e["epoch"] for e in epochs if e.get("best")]
    if best:
        loss.axvline(best[-1], color="gray", linestyle="--", linewidth=1, label="best")
        loss.legend()
    return figure


def length_accuracy_figure(test: dict) -> Figure:
    """Bars of test exact match per sequence length, each labelled with its sample count."""
    lengths = sorted(test["length_accuracy"], key=int)
    accuracy = [test["length_accuracy"][n] for n in lengths]
    figure = bare_figure(5, 4)
    axes = figure.subplots()
    bars = axes.bar([f"{n} digit{'s' * (n != '1')}" for n in lengths], accuracy)
    axes.bar_label(
        bars,
        [f"{a:.3f}\n(n={test['length_count'][n]})" for a, n in zip(accuracy, lengths, strict=True)],
    )
    axes.set(
        title=f"test exact match by length (all: {test['exact_match']:.3f})",
        ylabel="exact match",
        ylim=(0, 1.15),
    )
    return figure


def confusion_figure(test: dict) -> Figure:
    """The test confusion matrix (rows true, columns predicted), counts written in the cells,
    colours on a log scale so off-diagonal mistakes stay visible next to the diagonal."""
    matrix = np.asarray(test["confusion"], dtype=np.int64)
    names = class_names()
    figure = bare_figure(8, 7)
    axes = figure.subplots()
    image = axes.imshow(np.log1p(matrix), cmap="Blues")
    figure.colorbar(image, ax=axes, label="log(1 + count)")
    axes.set_xticks(range(len(names)), names)
    axes.set_yticks(range(len(names)), names)
    axes.set(title="test confusion over all slots", xlabel="predicted", ylabel="true")
    threshold = np.log1p(matrix.max()) / 2
    for (row, col), value in np.ndenumerate(matrix):
        if value:
            color = "white" if np.log1p(value) > threshold else "black"
            axes.text(col, row, str(value), ha="center", va="center", fontsize=7, color=color)
    return figure


def write_report(run: Path) -> list[Path]:
    """Write the report PNGs into `run`; returns the paths written."""
    epochs = read_epochs(run)
    written = [save_png(learning_curves_figure(epochs, _initial_lr(run)), run / CURVES_PNG)]
    test_path = RunPaths(run).test_metrics
    if test_path.is_file():
        test = read_json_object(test_path)
        written.append(save_png(length_accuracy_figure(test), run / LENGTH_PNG))
        written.append(save_png(confusion_figure(test), run / CONFUSION_PNG))
    return written


def _initial_lr(run: Path) -> float | None:
    """--lr of the run from its config.yaml, so a cut after epoch 1 is marked too."""
    try:
        return float(yaml.safe_load(RunPaths(run).config.read_text())["optim"]["lr"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def command(argv: list[str]) -> None:
    """`seqtrain report RUN [RUN ...] [--out DIR]`."""
    from seqtrain.common.cliparse import parse_config

    cfg = parse_config(ReportConfig, argv, "seqtrain report", ReportConfig.__doc__ or "")
    runs = expand_runs(cfg.runs)
    if len(runs) > 1:
        written = write_comparison(runs, cfg.out or Path.cwd())
    elif cfg.out is not None:
        raise UserError("--out is for several runs; one run's pictures go into its own folder")
    else:
        written = write_report(runs[0])
    for path in written:
        print(path)
    if len(runs) == 1 and len(written) == 1:
        print(f"(no {TEST_METRICS} in {runs[0]} yet: accuracy by length and confusion skipped)")
