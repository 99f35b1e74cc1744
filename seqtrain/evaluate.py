"""`seqtrain evaluate`: the metrics of a trained model on one split of the shards.

`evaluate_model` is the one evaluation implementation: each rank runs its disjoint part of the
split (`eval_loader`) and the metric counters are summed over ranks, so any number of processes
gives the numbers of one. The command wraps it: load the model, evaluate, print a table on the
main process and optionally write JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator, PartialState
from torch import nn

from seqtrain.common.atomic import atomic_write_json
from seqtrain.common.errors import UserError
from seqtrain.components.metrics import SequenceMetrics, sequence_loss
from seqtrain.config import DataConfig, LogConfig, RunConfig, TrainConfig
from seqtrain.data.format import NUM_SLOTS, Manifest, load_manifest
from seqtrain.data.stream import Batches, eval_loader
from seqtrain.distributed import all_reduce_sum, join_processes, make_accelerator, to_device
from seqtrain.export import ModelChoice, class_names, load_predictor
from seqtrain.models import build_model
from seqtrain.models.averaged import cross_shifts
from seqtrain.models.flops import forward_flops


@dataclass
class EvaluateConfig(ModelChoice):
    """Evaluate a trained model on a split of seqtrain-data shards (any number of processes
    under `accelerate launch` gives the numbers of one)."""

    shards: str
    """Folder or URL (s3://, gs://, http(s)://, file://) written by `seqtrain-data generate`
    (holds manifest.json)."""
    split: Literal["train", "val", "test"] = "test"
    """Split to evaluate (generator epoch 0 for train)."""
    json: Path | None = None
    """Also write the metrics to this JSON file."""
    batch_size: int = 1000
    """Batch size per process."""
    num_workers: int = 2
    """Loader worker processes per process (0 loads in the main process)."""
    cpu: bool = False
    """Run on CPU even when GPUs are visible."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size <= 0:
            raise UserError("--batch-size must be > 0")
        if self.num_workers < 0:
            raise UserError("--num-workers must be >= 0")


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    accelerator: Accelerator,
    manifest: Manifest,
    data: DataConfig,
    split: str,
    channels_last: bool = False,
    loader: Batches | None = None,
) -> SequenceMetrics:
    """Metrics of `model` over the whole `split`, the same on every rank (collective).

    Pass the bare model (`accelerator.unwrap_model`), already on `accelerator.device`: no DDP
    collectives run per batch, so a rank with less or no data cannot hang the others. The
    model's train/eval mode is restored afterwards. `loader`: this rank's `eval_loader` of
    `split`, when the caller keeps one (built here otherwise).
    """
    (metrics,) = evaluate_outputs(model, accelerator, manifest, data, split, channels_last, loader)
    return metrics


@torch.no_grad()
def evaluate_outputs(
    model: nn.Module,
    accelerator: Accelerator,
    manifest: Manifest,
    data: DataConfig,
    split: str,
    channels_last: bool = False,
    loader: Batches | None = None,
    outputs: int = 1,
) -> list[SequenceMetrics]:
    """`evaluate_model` of a model that scores several predictions of each batch at once
    ([outputs, B, 3, 11], e.g. ensemble members, `MemberEnsemble`): the metrics of each, from
    one pass over the split and one all-reduce."""
    was_training = model.training
    model.eval()
    metrics = [SequenceMetrics(accelerator.device) for _ in range(outputs)]
    if loader is None:
        loader = eval_loader(
            manifest,
            data,
            split,
            accelerator.process_index,
            accelerator.num_processes,
            accelerator.device,
        )
    for images, labels in loader:
        x, y = to_device(images, labels, accelerator.device, channels_last)
        with accelerator.autocast():
            scores = model(x).float().view(outputs, *y.shape, -1)
        for one, logits in zip(metrics, scores, strict=True):
            one.update(logits, y, sequence_loss(logits, y) * len(y))
    model.train(was_training)
    states = all_reduce_sum(torch.stack([one.state() for one in metrics]))
    return [SequenceMetrics.from_state(state) for state in states]


def evaluate_checkpoint(cfg: EvaluateConfig) -> dict[str, Any]:
    """Load the model, evaluate `cfg.split` on all ranks; the summary plus what was evaluated."""
    sources = cfg.sources
    run_cfg = RunConfig(
        data=DataConfig(
            shards=cfg.shards, eval_batch_size=cfg.batch_size, num_workers=cfg.num_workers
        ),
        train=TrainConfig(cpu=cfg.cpu),
        log=LogConfig(wandb_mode="disabled"),
    )
    join_processes(run_cfg)
    manifest = load_manifest(cfg.shards)
    accelerator = make_accelerator(run_cfg, sources[0].origin)
    views = cross_shifts(cfg.tta_shift)
    model = load_predictor(cfg)
    metrics = evaluate_model(model.to(accelerator.device), accelerator, manifest, run_cfg.data,
                             cfg.split)  # fmt: skip
    # Tear the process group down on every rank together: a rank exiting with gloo's threads
    # still alive aborts ("terminate called without an active exception").
    accelerator.end_training()
    forward = sum(
        forward_flops(partial(build_model, source.model), manifest.length_weights)
        for source in sources
    )
    return {
        "checkpoint": str(sources[0].origin),
        "model": sources[0].model,
        "ensemble": [str(source.origin) for source in sources[1:]],
        "tta_views": len(views),
        "inference_gflop_per_sample": forward * len(views) / 1e9,
        "shards": str(cfg.shards),
        "split": cfg.split,
        "num_processes": accelerator.num_processes,
        **metrics.summary(),
    }


def format_table(result: dict[str, Any]) -> str:
    """The evaluation result as aligned text: summary lines, then the confusion matrix."""
    count = result["count"]
    lines = [
        f"{result['split']} split of {result['shards']}: {count} sequences, "
        f"model {result['model']!r} from {result['checkpoint']}",
        *(
            [f"  averaged with {len(result['ensemble'])} more model(s): {result['ensemble']}"]
            if result.get("ensemble")
            else []
        ),
        f"  {'views per model':<20}{result.get('tta_views', 1)}",
        f"  {'inference GFLOP':<20}{result.get('inference_gflop_per_sample', 0):.3f} per sequence",
        f"  {'exact match':<20}{result['exact_match']:.4f}",
        f"  {'loss':<20}{result['loss']:.4f}",
    ]
    for slot, accuracy in enumerate(result["position_accuracy"], start=1):
        lines.append(f"  {f'position {slot}':<20}{accuracy:.4f}")
    for length in range(1, NUM_SLOTS + 1):
        key = str(length)
        label = f"length {length}"
        n = result["length_count"][key]
        lines.append(f"  {label:<20}{result['length_accuracy'][key]:.4f}  ({n} sequences)")
    lines += ["", "confusion over all slots (rows: true class, columns: predicted)"]
    names = [n if n != "blank" else "_" for n in class_names()]
    width = max(6, len(str(max(map(max, result["confusion"])))) + 1)
    lines.append(" " * 7 + "".join(f"{n:>{width}}" for n in names))
    for name, row in zip(names, result["confusion"], strict=True):
        lines.append(f"  {name:>5}" + "".join(f"{v:>{width}}" for v in row))
    lines.append("  (_ = blank slot)")
    return "\n".join(lines)


def command(argv: list[str]) -> None:
    """`seqtrain evaluate --checkpoint RUN --shards DIR [--split test] [--json FILE]`."""
    from seqtrain.common.cliparse import parse_config

    cfg = parse_config(EvaluateConfig, argv, "seqtrain evaluate", EvaluateConfig.__doc__ or "")
    result = evaluate_checkpoint(cfg)
    if PartialState().is_main_process:
        print(format_table(result))
        if cfg.json is not None:
            atomic_write_json(cfg.json, result)
