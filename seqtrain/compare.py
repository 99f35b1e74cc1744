"""`seqtrain report RUN1 RUN2 ...`: several runs as one question, in one picture and two tables.

Into the --out folder (each file written atomically):

    compare_curves.png   train loss, val loss and val exact match per epoch of every run, one
                         colour per group
    compare_runs.csv     one row per run (numbers: `seqtrain.components.run_summary`)
    compare_groups.csv   one row per group: runs, and the mean and sample standard deviation
                         (n - 1) of each number over its runs (std empty for a group of one)
    compare.md           both tables in Markdown

Runs form a group when their config.yaml name the same --wandb-group, or, without one, agree on
every setting but the seed and those that only name, place, log or guard a run
(`run_summary.NOT_THE_QUESTION`): the seeds of one recipe. A group is labelled by its W&B group,
else by the settings in which the groups differ.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from glob import glob, has_magic
from itertools import takewhile
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from seqtrain.common.atomic import atomic_write_text
from seqtrain.common.errors import UserError
from seqtrain.components.plots import bare_figure, save_png
from seqtrain.components.run_files import read_epochs
from seqtrain.components.run_summary import RunSummary, summarize

CURVES_PNG = "compare_curves.png"
RUNS_CSV = "compare_runs.csv"
GROUPS_CSV = "compare_groups.csv"
TABLES_MD = "compare.md"

# The numbers of a run in table order, each with how Markdown shows it.
NUMBERS: dict[str, str] = {
    "epochs": "{:d}",
    "processes": "{:d}",
    "final_val_loss": "{:.4f}",
    "final_val_exact_match": "{:.4f}",
    "best_val_loss": "{:.4f}",
    "best_val_exact_match": "{:.4f}",
    "test_exact_match": "{:.4f}",
    "train_seconds": "{:.1f}",
    "samples_trained": "{:d}",
    "train_flops": "{:.3e}",
}
# Curves of the picture: (title, metrics.jsonl field).
CURVES = (("train loss", "train_loss"), ("val loss", "val_loss"),
          ("val exact match", "val_exact_match"))  # fmt: skip


@dataclass
class Group:
    """Runs that answer the same question, and the label the tables and picture give them."""

    label: str
    runs: list[RunSummary]


def expand_runs(arguments: Sequence[Path]) -> list[Path]:
    """The run folders named: an argument that exists as is, else a glob pattern (quoted, so
    the shell left it) replaced by its matching folders in sorted order; each run once."""
    runs: list[Path] = []
    for argument in arguments:
        if argument.exists() or not has_magic(str(argument)):
            matches = [argument]
        else:
            matches = [Path(p) for p in sorted(glob(str(argument))) if Path(p).is_dir()]
            if not matches:
                raise UserError(f"no run folder matches {argument}")
        runs.extend(m for m in matches if m not in runs)
    return runs


def group_runs(summaries: list[RunSummary]) -> list[Group]:
    """The groups in order of their first run; runs keep their order within a group."""
    members: dict[Any, list[RunSummary]] = {}
    for summary in summaries:
        members.setdefault(_group_key(summary), []).append(summary)
    labels = _labels(list(members.values()))
    return [Group(label, runs) for label, runs in zip(labels, members.values(), strict=True)]


def _group_key(summary: RunSummary) -> Any:
    if summary.wandb_group:
        return ("wandb_group", summary.wandb_group)
    if not summary.question:  # no config.yaml: nothing says which runs it belongs with
        return ("run", summary.run)
    return ("config", repr(sorted(summary.question.items())))


def _labels(groups: list[list[RunSummary]]) -> list[str]:
    """Each group's W&B group, else the settings (`field=value`) in which the groups differ,
    else (one group, or no config) the name its runs share (`job` of job-seed0, job-seed1)."""
    firsts = [runs[0] for runs in groups]
    keys = sorted({k for s in firsts for k in s.question})
    differing = [k for k in keys if len({repr(s.question.get(k)) for s in firsts}) > 1]
    labels = []
    for runs, first in zip(groups, firsts, strict=True):
        settings = ", ".join(f"{k.split('.')[-1]}={first.question.get(k)}" for k in differing)
        shared = _shared_name([s.name for s in runs])
        labels.append(first.wandb_group or (settings if first.question and settings else shared))
    return labels


def _shared_name(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    columns = zip(*names, strict=False)  # as long as the shortest name
    prefix = "".join(c[0] for c in takewhile(lambda c: len(set(c)) == 1, columns))
    return re.sub(r"[-_.]*(seed)?[-_.]*$", "", prefix) or names[0]


def run_rows(groups: list[Group]) -> list[dict[str, Any]]:
    return [
        {"run": s.name, "group": g.label, **{k: getattr(s, k) for k in NUMBERS}, "note": s.note}
        for g in groups
        for s in g.runs
    ]


def group_rows(groups: list[Group]) -> list[dict[str, Any]]:
    """Per group: its size, and mean and std of each number over the runs that have it."""
    rows = []
    for group in groups:
        row: dict[str, Any] = {"group": group.label, "runs": len(group.runs)}
        for key in NUMBERS:
            values = [getattr(s, key) for s in group.runs if getattr(s, key) is not None]
            row[f"{key}_mean"] = statistics.fmean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return rows


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV with a header; None is an empty cell, floats keep full precision."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in rows])
    return text.getvalue()


def markdown_tables(groups: list[Group]) -> str:
    """The runs table and the groups table (mean ± std) in Markdown."""
    runs = [
        [s.name, g.label, *(_shown(k, getattr(s, k)) for k in NUMBERS)]
        for g in groups
        for s in g.runs
    ]
    stats = [
        [row["group"], str(row["runs"]),
         *(_mean_std(k, row[f"{k}_mean"], row[f"{k}_std"]) for k in NUMBERS)]
        for row in group_rows(groups)
    ]  # fmt: skip
    notes = [f"- {s.name}: {s.note}" for g in groups for s in g.runs if s.note]
    parts = [
        "## Runs\n\n" + _markdown(["run", "group", *NUMBERS], runs),
        "## Groups (mean ± sample std over the group's runs)\n\n"
        + _markdown(["group", "runs", *NUMBERS], stats),
    ]
    if notes:
        parts.append("Notes:\n\n" + "\n".join(notes) + "\n")
    return "\n".join(parts)


def _shown(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if NUMBERS[key] == "{:d}":
        return NUMBERS[key].format(round(value))
    return NUMBERS[key].format(value)


def _mean_std(key: str, mean: float | None, std: float | None) -> str:
    # A mean of whole numbers (epochs, processes) is not one: shown with decimals.
    shape = "{:.4g}" if NUMBERS[key] == "{:d}" else NUMBERS[key]
    if mean is None:
        return "-"
    return shape.format(mean) + ("" if std is None else " ± " + shape.format(std))


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def curves_figure(groups: list[Group], epochs: Callable[[RunSummary], list[dict]]) -> Figure:
    """One panel per entry of CURVES; a line per run (`epochs(run)` its records), coloured by
    its group, so a group's seeds read as one band."""
    figure = bare_figure(15, 4.5)
    panels = figure.subplots(1, len(CURVES))
    for index, group in enumerate(groups):
        color = f"C{index % 10}"
        for run_index, summary in enumerate(group.runs):
            records = epochs(summary)
            x = [e["epoch"] for e in records]
            label = group.label if run_index == 0 else None
            for axes, (_, field) in zip(panels, CURVES, strict=True):
                axes.plot(x, [e[field] for e in records], "o-", color=color, alpha=0.8,
                          markersize=3, label=label)  # fmt: skip
    for axes, (title, _) in zip(panels, CURVES, strict=True):
        axes.set(title=title, xlabel="epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    panels[-1].set(ylim=(0, 1))
    panels[0].legend(title="group", fontsize="small")
    return figure


def read_groups(runs: list[Path]) -> tuple[dict[Path, list[dict]], list[Group]]:
    """The metrics.jsonl records of each of `runs` and the runs' groups; a folder that is not a
    run is a UserError naming it."""
    epochs = {run: read_epochs(run) for run in runs}
    return epochs, group_runs([summarize(run, records) for run, records in epochs.items()])


def write_comparison(runs: list[Path], out: Path) -> list[Path]:
    """Write the picture and tables of `runs` into `out` (nothing when a run is unreadable);
    returns the paths written."""
    epochs, groups = read_groups(runs)
    curves = save_png(curves_figure(groups, lambda s: epochs[s.run]), out / CURVES_PNG)
    atomic_write_text(out / RUNS_CSV, csv_text(run_rows(groups)))
    atomic_write_text(out / GROUPS_CSV, csv_text(group_rows(groups)))
    atomic_write_text(out / TABLES_MD, markdown_tables(groups))
    return [curves, out / RUNS_CSV, out / GROUPS_CSV, out / TABLES_MD]


def print_group_table(runs: list[Path]) -> None:
    """The Markdown tables of `runs` on stdout (what `seqtrain train --seeds` ends with)."""
    _, groups = read_groups(runs)
    print(markdown_tables(groups), flush=True)
