"""The run folder's file names, in one place: every part that writes or reads a run asks here.

<output-dir>/<run-name>/
    config.yaml          the resolved config, written before step 1 (reruns the job)
    metrics.jsonl        one JSON line per finished epoch
    ranks/<rank>.json    each rank's world size, LR history and last epoch
    checkpoints/last     the newest checkpoint (resume), checkpoints/best the best --best-metric
    checkpoints/epoch-NNNN   the state after epoch NNNN, the last --keep-checkpoints epochs
    checkpoints/members  --members: each member's best weights (an ensemble folder)
    test_metrics.json    the best model on test
    predictions.png      sample test predictions of the best model
    export/              the best weights for deployment (`seqtrain export`)
    wandb/, wandb_run.json   the W&B run's files and the id a resume continues
    train_log.csv        --report-to csv: one step,metric,value row per logged point
    tensorboard/         --report-to tensorboard: TensorBoard's event files
    profile/rank<N>.pt.trace.json   --profile-steps: each rank's torch.profiler trace
    .owner.lock          held by the one job that owns the folder
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RANKS = "ranks"
CHECKPOINTS = "checkpoints"
TEST_METRICS = "test_metrics.json"
PREDICTIONS = "predictions.png"
EXPORT = "export"
WANDB_DIR = "wandb"
WANDB_RUN = "wandb_run.json"
TRAIN_LOG = "train_log.csv"
TENSORBOARD = "tensorboard"
PROFILE = "profile"
LOCK = ".owner.lock"

# Everything a run writes (the lock aside): `--overwrite` removes these and nothing else, so a
# run folder that is also, say, a home directory loses nothing else.
OUTPUTS = (CONFIG, METRICS, TEST_METRICS, PREDICTIONS, CHECKPOINTS, EXPORT, RANKS, WANDB_DIR,
           WANDB_RUN, TRAIN_LOG, TENSORBOARD, PROFILE)  # fmt: skip
# Present once a run has started: the resolved config is written before step 1.
MARKERS = (CONFIG, CHECKPOINTS, METRICS)


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    def rank_record(self, rank: int) -> Path:
        return self.root / RANKS / f"{rank}.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def last(self) -> Path:
        return self.checkpoints / "last"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best"

    @property
    def members(self) -> Path:
        """--members: the ensemble folder of each member's best weights."""
        return self.checkpoints / "members"

    def epoch_checkpoint(self, epoch: int) -> Path:
        """The state after `epoch` (counted from 1, as metrics.jsonl counts)."""
        return self.checkpoints / f"epoch-{epoch:04d}"

    @property
    def test_metrics(self) -> Path:
        return self.root / TEST_METRICS

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS

    @property
    def export(self) -> Path:
        return self.root / EXPORT

    @property
    def wandb_dir(self) -> Path:
        return self.root / WANDB_DIR

    @property
    def wandb_run(self) -> Path:
        return self.root / WANDB_RUN

    @property
    def train_log(self) -> Path:
        return self.root / TRAIN_LOG

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    def profile_trace(self, rank: int) -> Path:
        # The suffix TensorBoard's profiler plugin and W&B's trace viewer look for.
        return self.root / PROFILE / f"rank{rank}.pt.trace.json"

    @property
    def lock(self) -> Path:
        return self.root / LOCK
