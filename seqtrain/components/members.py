"""`--members N`: what a run does differently when it trains N models as one stacked model.

- The model: each member built after seeding with its own seed (`TrainConfig.trained_seeds`),
  as a run of that seed builds its model, then stacked (`seqtrain.models.stacked`), vectorized
  on a GPU, one member after another on CPU.
- The data: member i is fed the batches a run of seed S_i would train (its own epoch plans, so
  its own shard order, shuffle and dropout keys), every member's batch of a step interleaved
  into one (`interleave`). Each member has its own loader: N times the loader workers (and with
  --stage-on-device N staged copies of the epoch), the data six runs would read.
- The scores: val and test score every member and the ensemble (the members' mean softmax) in
  one pass; the LR schedule, early stopping and checkpoints/best follow the ensemble, while
  `MemberBests` keeps each member's own best epoch by --best-metric, whose weights the run keeps
  in `checkpoints/members` (an ensemble folder, see `seqtrain.export`) and exports at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from accelerate.utils import set_seed
from torch import nn

from seqtrain.components.metrics import SequenceMetrics
from seqtrain.components.schedules import EarlyStopping
from seqtrain.config import RunConfig
from seqtrain.data.position import TrainBatch
from seqtrain.models import build_model
from seqtrain.models.stacked import StackedMembers


def seeded_model(cfg: RunConfig, device: torch.device) -> nn.Module:
    """The run's model, initialised as a run of --seed initialises it; with --members N, the N
    members so initialised, stacked (vectorized on a GPU)."""
    models = []
    for seed in cfg.train.trained_seeds:
        set_seed(seed)
        models.append(build_model(cfg.model.model))
    if len(models) == 1:
        return models[0]
    if cfg.model.channels_last:  # before stacking: the stacked weights keep each one's layout
        models = [model.to(memory_format=torch.channels_last) for model in models]
    return StackedMembers(models, vectorized=device.type == "cuda")


def interleave(batches: list[Iterable[TrainBatch]]) -> Iterator[TrainBatch]:
    """Every member's batch of each step as one batch, sample-major: row b * N + i is member
    i's sample b (`StackedMembers`' layout)."""
    for parts in zip(*batches, strict=True):
        fields = zip(*parts, strict=True)
        yield TrainBatch(*(torch.stack(field, 1).flatten(0, 1) for field in fields))


def scored_summary(metrics: list[SequenceMetrics]) -> dict[str, Any]:
    """The summary of one model's metrics, or, for the members then the ensemble (as
    `MemberEnsemble` scores them), the ensemble's with the members' under "members"."""
    *members, scored = metrics
    summary = scored.summary()
    if members:
        summary["members"] = [member.summary() for member in members]
    return summary


def scores_per_batch(members: int) -> int:
    """Predictions scored per batch: one model's, or each member's and the ensemble's."""
    return members + 1 if members > 1 else 1


def member_values(summary: dict[str, Any], split: str) -> dict[str, float]:
    """The members' loss and exact match on `split` as W&B keys (`test/member3/exact_match`),
    from a `scored_summary`; empty for one model."""
    return {
        f"{split}/member{i}/{name}": member[name]
        for i, member in enumerate(summary.get("members", ()))
        for name in ("loss", "exact_match")
    }


def member_records(val: dict[str, Any]) -> dict[str, Any]:
    """The members' part of an epoch's metrics.jsonl line (none for one model)."""
    if "members" not in val:
        return {}
    return {
        "members": [
            {"val_loss": member["loss"], "val_exact_match": member["exact_match"]}
            for member in val["members"]
        ]
    }


class MemberBests:
    """Each member's best epoch so far by --best-metric (the same rule as checkpoints/best);
    registered for checkpointing, so a resumed run continues each member's record."""

    def __init__(self, members: int, metric: str) -> None:
        self.records = [EarlyStopping(0, metric) for _ in range(members)]

    def update(self, val: dict[str, Any]) -> list[int]:
        """Record an epoch's member summaries; the members whose metric is a new best."""
        return [
            i
            for i, (record, member) in enumerate(zip(self.records, val["members"], strict=True))
            if record.update(member)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {"members": [record.state_dict() for record in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for record, saved in zip(self.records, state["members"], strict=True):
            record.load_state_dict(saved)
