"""The batch sizes a run trains with: the global batch, each process's share of it, its
micro-batches (gradient accumulation) and the canonical streams its order is dealt from.

--global-batch-size G fixes the samples per optimizer step whatever the number of processes W:
each process trains G / W, in (G / W) / --micro-batch-size passes whose gradients are summed
before the step. Without it, --batch-size is per process and G = --batch-size x W (a run on
more processes then steps with more samples). Sizes that do not divide are one-line errors
naming the flags, found before the run starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from seqtrain.common.errors import UserError
from seqtrain.config import DataConfig

# The canonical streams by default: the largest power of two up to this that divides G. 64 lets
# 1, 2, 4 ... 64 processes each read whole streams, and keeps a step's chunks at G / 64 samples.
MAX_DEFAULT_STREAMS = 64


@dataclass(frozen=True)
class BatchSizes:
    global_batch: int
    per_process: int
    micro: int  # samples per forward/backward pass on each process
    processes: int
    streams: int  # canonical streams (see `seqtrain.data.position`)

    @property
    def accumulation(self) -> int:
        """Forward/backward passes per optimizer step on each process."""
        return self.per_process // self.micro

    def describe(self) -> str:
        """The line the run's log starts with."""
        passes = (
            f", in {self.accumulation} micro-batches of {self.micro} (gradients accumulated)"
            if self.accumulation > 1
            else ""
        )
        return (
            f"global batch {self.global_batch} = {self.processes} process(es) x "
            f"{self.per_process}{passes}; sample order from {self.streams} canonical streams"
        )


def batch_sizes(cfg: DataConfig, processes: int) -> BatchSizes:
    """The sizes `cfg` asks for on `processes` processes, or a UserError naming the flag."""
    if cfg.global_batch_size is None:
        per_process = cfg.batch_size
        total = per_process * processes
        source = f"--batch-size {per_process} x {processes} process(es)"
    else:
        total = cfg.global_batch_size
        if total % processes:
            raise UserError(
                f"--global-batch-size {total} does not divide by the {processes} processes: "
                "give a multiple of the number of processes"
            )
        per_process = total // processes
        source = f"--global-batch-size {total}"
    micro = cfg.micro_batch_size or per_process
    if per_process % micro:
        raise UserError(
            f"--micro-batch-size {micro} does not divide the per-process batch {per_process} "
            f"({source}{'' if cfg.global_batch_size is None else f' / {processes} processes'})"
        )
    streams = cfg.canonical_streams or math.gcd(total, MAX_DEFAULT_STREAMS)
    if total % streams:
        raise UserError(
            f"--canonical-streams {streams} does not divide the global batch {total} ({source})"
        )
    return BatchSizes(total, per_process, micro, processes, streams)
