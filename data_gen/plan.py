"""The shard jobs of a run, their random streams, and how nodes share them.

Every shard's content depends only on (seed, split, epoch, shard index), never on which
worker or node renders it or when: that is what makes output independent of parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_gen.config import GenConfig
from seqtrain.data.format import SPLITS, shard_relpath


@dataclass(frozen=True)
class ShardJob:
    split: str
    epoch: int
    shard: int
    count: int

    @property
    def relpath(self) -> str:
        return shard_relpath(self.split, self.epoch, self.shard)

    def rng(self, seed: int) -> np.random.Generator:
        """This shard's own stream: a SeedSequence keyed by everything that names the shard."""
        return np.random.default_rng([seed, SPLITS.index(self.split), self.epoch, self.shard])


def split_plan(split: str, size: int, epochs: int, shard_size: int) -> list[ShardJob]:
    """`epochs` x ceil(size / shard_size) shards; the last shard of an epoch may be short."""
    return [
        ShardJob(split, epoch, shard, min(shard_size, size - start))
        for epoch in range(epochs)
        for shard, start in enumerate(range(0, size, shard_size))
    ]


def plan_jobs(cfg: GenConfig) -> list[ShardJob]:
    """All shards of the run; val and test are rendered once, as epoch 0."""
    return [
        *split_plan("train", cfg.train_size, cfg.epochs, cfg.shard_size),
        *split_plan("val", cfg.val_size, 1, cfg.shard_size),
        *split_plan("test", cfg.test_size, 1, cfg.shard_size),
    ]


def node_jobs(jobs: list[ShardJob], num_nodes: int, node_rank: int) -> list[ShardJob]:
    """Round-robin: disjoint across ranks, together exactly `jobs`, balanced to within one."""
    return jobs[node_rank::num_nodes]
