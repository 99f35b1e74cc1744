"""What a training run writes into its folder beside the checkpoints (names: `run_paths`):
the resolved config before step 1, one metrics line per finished epoch (read by `seqtrain
report`), each rank's record, and the predictions picture of the best model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from seqtrain.common.atomic import atomic_write_json, atomic_write_text
from seqtrain.common.cliparse import dump_config
from seqtrain.common.errors import UserError
from seqtrain.components.run_paths import METRICS, RunPaths
from seqtrain.config import RunConfig
from seqtrain.data.format import Manifest
from seqtrain.data.stream import eval_loader
from seqtrain.distributed import to_device

PREDICTION_SAMPLES = 10


def write_resolved_config(run_dir: Path, cfg: RunConfig) -> None:
    """Print the resolved config and save it as config.yaml (main process only)."""
    resolved, path = dump_config(cfg), RunPaths(run_dir).config
    print(f"# resolved config (saved as {path})\n{resolved}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, resolved)


def truncate_metrics(run_dir: Path, epochs_done: int) -> None:
    """Keep only the epochs a resumed run will not redo (a crash may have left one more)."""
    path = RunPaths(run_dir).metrics
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["epoch"] <= epochs_done]
        atomic_write_text(path, "".join(f"{ln}\n" for ln in kept))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of metrics.jsonl (none before the first epoch's end)."""
    path = RunPaths(run_dir).metrics
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def read_epochs(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of metrics.jsonl for a report of the run: a missing folder, a missing
    or damaged file, or no epoch yet is a UserError."""
    path = RunPaths(run_dir).metrics
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise UserError(f"{run_dir} has no {METRICS}: not a seqtrain run folder?")
    try:
        records = read_metrics(run_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON lines: {e}") from None
    if not records:
        raise UserError(f"{path} holds no epochs yet")
    return records


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(RunPaths(run_dir).metrics, "a") as f:
        f.write(json.dumps(record) + "\n")


def epoch_line(record: dict[str, Any], epochs: int, lr_reduced: bool) -> str:
    """The console line of one finished epoch, from its metrics.jsonl record."""
    line = (
        f"Epoch {record['epoch']}/{epochs} - train loss {record['train_loss']:.4f} - "
        f"val loss {record['val_loss']:.4f} - val exact match {record['val_exact_match']:.4f} - "
        f"lr {record['lr']:.1e} - {record['epoch_seconds']:.1f}s"
    )
    if lr_reduced:
        line += f" - LR reduced to {record['lr']:.1e}"
    if record["best"]:
        line += " - best model saved"
    return line


def write_rank_record(
    run_dir: Path,
    accelerator: Accelerator,
    lr_history: list[float],
    epochs: int,
    sources: dict[str, Path | None] | None = None,
    effective_lr: float | None = None,
) -> None:
    """Each rank's own view (world size, LR per epoch, last epoch, the checkpoints it resumed
    from and tested in `sources`, the LR --lr-scale set): proof that all ranks formed one group
    and took the same decisions. One file per rank, so no rank writes another's."""
    record = {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "effective_lr": effective_lr,
        "lr_history": lr_history,
        "epochs": epochs,
        **{name: None if path is None else str(path) for name, path in (sources or {}).items()},
    }
    atomic_write_json(RunPaths(run_dir).rank_record(accelerator.process_index), record)


@torch.no_grad()
def write_predictions_picture(
    path: Path, model: nn.Module, accelerator: Accelerator, manifest: Manifest, cfg: RunConfig
) -> None:
    """Random test samples (seeded) from the first test batch, run through `model`."""
    loader = eval_loader(manifest, cfg.data, "test", rank=0, world_size=1)
    images, labels = next(iter(loader))
    chosen = np.random.default_rng(cfg.train.seed).choice(
        len(images), size=min(PREDICTION_SAMPLES, len(images)), replace=False
    )
    images, labels = images[chosen], labels[chosen]
    x, _ = to_device(images, labels, accelerator.device, cfg.model.channels_last)
    with accelerator.autocast():
        predicted = model(x).argmax(dim=-1).cpu().numpy()
    # Imported here: matplotlib costs every rank's start-up a quarter of a second otherwise,
    # and only the main process of a run that finishes draws.
    from seqtrain.components.plots import save_predictions

    save_predictions(path, images[:, 0].numpy(), labels.numpy(), predicted)
