"""One run's numbers for comparing runs, read back from the files it wrote (names: `run_paths`).

    metrics.jsonl       final and best val loss and exact match, epochs, processes, seconds
                        (the sum of `epoch_seconds`: train and val, not start-up or test),
                        and the samples trained: each epoch's new optimizer steps x --batch-size
                        x that epoch's processes
    test_metrics.json   test exact match (absent while the run is unfinished)
    config.yaml         --batch-size and --model for the compute, and what the run trained:
                        the settings that decide which runs answer the same question

Compute is model FLOPs, counted as the trainer counts them for `train/tflops_job` and MFU
(`seqtrain.models.flops`: a training step is 3x the forward, convolutions and matrix products
only): samples trained x training FLOPs per sample. Evaluation passes are not counted. The
per-sample count weighs sequence lengths as the run's manifest drew them (it matters only to
models that skip blank slots); where the manifest cannot be read, lengths count equally and
the summary says so. A run resumed on another number of processes in the middle of an epoch
is counted at the epoch's final process count.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import yaml

from seqtrain.common.atomic import read_json_object
from seqtrain.common.errors import UserError
from seqtrain.components.run_paths import CONFIG, METRICS, RunPaths
from seqtrain.data.format import load_manifest
from seqtrain.models import build_model
from seqtrain.models.flops import flops_per_sample

# Settings that name, place, log or guard a run rather than shape what it learns: runs whose
# configs differ only in these (the seed among them) answer the same question. None: the whole
# section. Any other difference, a setting added later included, keeps runs apart.
NOT_THE_QUESTION: dict[str, tuple[str, ...] | None] = {
    "train": ("seed", "seeds", "run_name", "output_dir", "resume", "overwrite",
              "accept_changes", "log_every", "checkpoint_every", "keep_checkpoints",
              "dist_timeout"),
    "data": ("cache_dir", "cache_max_gb", "verify_shards"),
    "preempt": None,
    "log": None,
}  # fmt: skip
EQUAL_LENGTHS = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class RunSummary:
    """The numbers of one run that a comparison table shows."""

    run: Path
    epochs: int
    processes: int
    final_val_loss: float
    final_val_exact_match: float
    best_val_loss: float
    best_val_exact_match: float
    test_exact_match: float | None  # None: no test_metrics.json yet
    train_seconds: float
    samples_trained: int | None  # None: no config.yaml (--batch-size unknown)
    train_flops: float | None
    question: dict[str, Any]  # the settings that decide its group (empty: no config.yaml)
    wandb_group: str | None
    note: str = ""  # how a number was arrived at, where that is not the rule above

    @property
    def name(self) -> str:
        return self.run.name


def summarize(run: Path, epochs: list[dict[str, Any]]) -> RunSummary:
    """The summary of `run`, whose metrics.jsonl records are `epochs` (at least one); a record
    or config that lacks a number is a UserError naming it."""
    try:
        return _summary(run, epochs)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{run}: {METRICS} or {CONFIG} lacks a readable {e}") from None


def _summary(run: Path, epochs: list[dict[str, Any]]) -> RunSummary:
    paths = RunPaths(run)
    config = read_run_config(run)
    final = epochs[-1]
    test = read_json_object(paths.test_metrics) if paths.test_metrics.is_file() else None
    samples = None
    flops = None
    note = ""
    if config:
        samples = samples_trained(epochs, int(config["data"]["batch_size"]))
        per_sample, note = _training_flops_per_sample(config)
        flops = samples * per_sample
    return RunSummary(
        run=run,
        epochs=int(final["epoch"]),
        processes=int(final.get("num_processes", 1)),
        final_val_loss=final["val_loss"],
        final_val_exact_match=final["val_exact_match"],
        best_val_loss=min(e["val_loss"] for e in epochs),
        best_val_exact_match=max(e["val_exact_match"] for e in epochs),
        test_exact_match=None if test is None else test["exact_match"],
        train_seconds=sum(e["epoch_seconds"] for e in epochs),
        samples_trained=samples,
        train_flops=flops,
        question=the_question(config),
        wandb_group=(config.get("log") or {}).get("wandb_group") or None,
        note=note,
    )


def read_run_config(run: Path) -> dict[str, Any]:
    """The run's config.yaml as a plain mapping; empty when the run has none."""
    path = RunPaths(run).config
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path} is not readable YAML: {e}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} does not hold a seqtrain config")
    return config


def samples_trained(epochs: list[dict[str, Any]], batch_size: int) -> int:
    """Training samples over all processes: each epoch's optimizer steps (the growth of the
    cumulative `step`) x the per-process batch x that epoch's processes."""
    total, step_before = 0, 0
    for record in epochs:
        total += (record["step"] - step_before) * batch_size * record.get("num_processes", 1)
        step_before = record["step"]
    return total


def the_question(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without the settings in NOT_THE_QUESTION, flattened to `section.field`."""
    kept = {}
    for section, fields in config.items():
        if section in NOT_THE_QUESTION and NOT_THE_QUESTION[section] is None:
            continue
        if not isinstance(fields, dict):
            kept[section] = fields
            continue
        skipped = NOT_THE_QUESTION.get(section) or ()
        kept.update({f"{section}.{k}": v for k, v in fields.items() if k not in skipped})
    return kept


def _training_flops_per_sample(config: dict[str, Any]) -> tuple[float, str]:
    """Training FLOPs per sample of the run's model and its data's length weights (or equal
    weights, with a note, where the manifest cannot be read)."""
    shards = config["data"]["shards"]
    try:
        weights, note = load_manifest(shards).length_weights, ""
    except UserError:
        weights = EQUAL_LENGTHS
        note = f"FLOPs per sample with equal length weights (no manifest at {shards})"
    return _flops(config["model"]["model"], tuple(weights)), note


@cache
def _flops(model: str, length_weights: tuple[float, ...]) -> float:
    # Counting builds the model and runs it: once per model and data, not once per run.
    return flops_per_sample(partial(build_model, model), length_weights=length_weights)
