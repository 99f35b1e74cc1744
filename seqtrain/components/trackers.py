"""Where the metrics go (--report-to): W&B (tracking.py), TensorBoard event files and a CSV file
in the run folder, all as Accelerate trackers of one Accelerator.

The run folder's trackers (TensorBoard, CSV) are written by the main process only, each point
as it is logged and flushed, so a killed run loses at most the point being written. A resumed
segment restarts from a checkpoint at step P, which may be older than the last point written:
the CSV file is cut back to its rows up to P and TensorBoard is told to hide (purge) the points
after P, so no step appears twice; points at steps up to P that the segment logs again (W&B's
replay of metrics.jsonl) are already there and are dropped.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, TensorBoardTracker, on_main_process

from seqtrain.common.atomic import atomic_write_text
from seqtrain.common.errors import UserError
from seqtrain.components.run_paths import RunPaths
from seqtrain.config import RunConfig

CSV_HEADER = ("step", "metric", "value")
# Accelerate's TensorBoard writer takes either package (W&B's is checked in tracking.py).
TENSORBOARD_PACKAGES = ("tensorboard", "tensorboardX")


def check_installed(cfg: RunConfig) -> None:
    """--report-to tensorboard without its package is an error: Accelerate would drop the
    tracker with a warning, and the run would write no event files."""
    if "tensorboard" in cfg.log.report_to and not any(
        importlib.util.find_spec(package) for package in TENSORBOARD_PACKAGES
    ):
        raise UserError(
            "--report-to tensorboard needs the tensorboard package "
            '(install seqtrain with its [tensorboard] extra: pip install ".[tensorboard]"); '
            "or leave it out of --report-to"
        )


def chosen(cfg: RunConfig, run_dir: Path) -> list[str | GeneralTracker]:
    """The trackers for `Accelerator(log_with=...)`: "wandb" (opened by tracking.py), and the
    run folder's own trackers, opened by `accelerator.init_trackers`."""
    paths = RunPaths(run_dir)
    made: dict[str, Any] = {
        "wandb": lambda: "wandb",
        "tensorboard": lambda: RunTensorBoard(paths.tensorboard),
        "csv": lambda: CSVTracker(paths.train_log),
    }
    return [made[name]() for name in _chosen_names(cfg)]


def _chosen_names(cfg: RunConfig) -> list[str]:
    return [n for n in cfg.log.report_to if n != "wandb" or cfg.log.wandb_on]


def continue_after(accelerator: Accelerator, step: int) -> None:
    """Before `init_trackers`: this segment logs the steps after `step` (see the module
    docstring)."""
    for tracker in accelerator.log_with:
        if isinstance(tracker, _RunFolderTracker):
            tracker.resume_step = step


def log_to_run_folder(accelerator: Accelerator, values: dict[str, Any], step: int) -> None:
    """`values` at `step` to the run folder's trackers (W&B's points go through tracking.py,
    which keeps W&B's own step)."""
    for tracker in accelerator.trackers:
        if isinstance(tracker, _RunFolderTracker):
            tracker.log(values, step=step)


class _RunFolderTracker:
    """A tracker writing into the run folder, continued by a resumed segment after a step."""

    resume_step = 0

    def _new(self, values: dict[str, Any], step: int | None) -> dict[str, Any]:
        return values if step is None or step > self.resume_step else {}


class CSVTracker(_RunFolderTracker, GeneralTracker):
    """train_log.csv: a `step,metric,value` row per scalar logged (read it with pandas and
    pivot on `metric`). Rows are appended and flushed as they are logged."""

    name = "csv"
    requires_logging_directory = False

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._file: io.TextIOWrapper | None = None

    @property
    def tracker(self) -> io.TextIOWrapper | None:
        return self._file

    @on_main_process
    def start(self) -> None:
        """Keep the complete rows up to the resume step (a killed writer may have torn the
        last one), then append."""
        kept = [row for row in _rows(self.path) if int(row[0]) <= self.resume_step]
        atomic_write_text(self.path, _csv_text([CSV_HEADER, *kept]))
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 (closed in finish)

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        scalars = [
            (step, key, value)
            for key, value in self._new(values, step).items()
            if isinstance(value, int | float)
        ]
        if scalars and self._file is not None:
            self._file.write(_csv_text(scalars))  # one write per call: rows land whole
            self._file.flush()

    @on_main_process
    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _rows(path: Path) -> list[list[str]]:
    """The data rows of a train_log.csv whose step and value parse (none if it is missing)."""
    if not path.exists():
        return []
    text = path.read_text()
    if not text.endswith("\n"):  # a torn last line
        text = text[: text.rfind("\n") + 1]
    return [row for row in csv.reader(io.StringIO(text)) if _complete(row)]


def _complete(row: list[str]) -> bool:
    try:
        int(row[0]), float(row[2])
    except (ValueError, IndexError):
        return False  # the header, or a damaged line
    return len(row) == len(CSV_HEADER)


def _csv_text(rows: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


class RunTensorBoard(_RunFolderTracker, TensorBoardTracker):
    """Accelerate's TensorBoard tracker writing to the run folder's tensorboard/, continued by a
    resumed segment."""

    def __init__(self, folder: Path) -> None:
        super().__init__(run_name=folder.name, logging_dir=folder.parent)

    @on_main_process
    def start(self) -> None:
        if self.resume_step:
            # SummaryWriter's purge_step: TensorBoard hides the earlier segments' points from
            # this step on, which this segment logs again.
            self.init_kwargs["purge_step"] = self.resume_step + 1
        super().start()

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        """The run config as hparams: TensorBoard's take only flat scalars."""
        super().store_init_configuration(_flat(values))

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        new = self._new(values, step)
        if new:
            super().log(new, step=step, **kwargs)


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train/lr": 1e-3}; values hparams cannot hold (None, lists)
    as text."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        else:
            scalar = isinstance(value, bool | int | float | str)
            flat[f"{prefix}{key}"] = value if scalar else str(value)
    return flat
