"""Preemption and the wall-clock checkpoint cadence: stop at a step boundary, saved, resumable.

A signal handler only records that SIGTERM (or --preempt-signal) arrived, from the process's
first moment (`seqtrain.common.stop_signals`: loader workers never act on them). Every
--preempt-check-every steps all ranks take one small all-reduce (MAX) of two flags, "some rank
was signalled" and "--checkpoint-minutes have passed on some rank's clock", so every rank reaches
the same decision at the same step without a per-step host sync. A signalled run saves
checkpoints/last at that exact position and exits with EXIT_PREEMPTED; `--resume auto` continues
it. Launchers turn the ranks' exit code into their own (torch's elastic agent exits 1), so each
node's local main process also writes the file named by $SEQTRAIN_PREEMPTED_FILE, which the
launch/ scripts read to exit 75 themselves.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from seqtrain.common.atomic import atomic_write_text
from seqtrain.common.stop_signals import STOP_FLAG, stop_signals
from seqtrain.config import PreemptConfig
from seqtrain.distributed import all_reduce_max

# sysexits.h EX_TEMPFAIL ("try again later"): clear of torchrun's and accelerate's 1, the
# shell's 126/127, 128+N for death by signal N, and seqtrain's 2 (bad input) and 130.
EXIT_PREEMPTED = 75
PREEMPTED_FILE_ENV = "SEQTRAIN_PREEMPTED_FILE"


class Preempted(SystemExit):
    """Raised on every rank after the preemption checkpoint is saved; exits EXIT_PREEMPTED."""

    def __init__(self) -> None:
        super().__init__(EXIT_PREEMPTED)


@dataclass(frozen=True)
class Decision:
    """What all ranks agreed at a check: save `last` now, and stop after saving."""

    save: bool = False
    stop: bool = False


class PreemptionWatch:
    """Signal flag and checkpoint clock of one training process (see the module docstring)."""

    def __init__(self, cfg: PreemptConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.clock_started = time.monotonic()

    def __enter__(self) -> PreemptionWatch:
        """Record the signals while training (those that arrived since the process started
        count: `STOP_FLAG`); `close` (or leaving the block, however it is left) gives them
        back, so a failed run leaves no handler behind in the process."""
        STOP_FLAG.install(stop_signals(self.cfg.preempt_signal))
        self.clock_started = time.monotonic()  # start-up is not training time
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Give the signals back to their previous handlers (the run is over)."""
        STOP_FLAG.restore()

    def saved(self) -> None:
        """`last` was just written (an epoch's end): the --checkpoint-minutes clock starts over,
        so no timed save follows it a step later."""
        self.clock_started = time.monotonic()

    @property
    def signal_name(self) -> str | None:
        return STOP_FLAG.received

    def poll(self, step: int) -> Decision:
        """Collective every --preempt-check-every steps (all ranks call it at the same steps)."""
        if step % self.cfg.preempt_check_every:
            return Decision()
        minutes = self.cfg.checkpoint_minutes
        clock_due = minutes > 0 and time.monotonic() - self.clock_started >= minutes * 60
        flags = torch.tensor(
            [self.signal_name is not None, clock_due], dtype=torch.int32, device=self.device
        )
        signalled, clock_due = all_reduce_max(flags).tolist()
        if clock_due:
            self.clock_started = time.monotonic()
        return Decision(save=bool(signalled or clock_due), stop=bool(signalled))

    def stop(self, is_local_main_process: bool) -> Preempted:
        """The exception that ends a run after its preemption checkpoint is saved; the node's
        local main process first leaves the mark the launch/ scripts read."""
        marker = os.environ.get(PREEMPTED_FILE_ENV)
        if marker and is_local_main_process:
            atomic_write_text(Path(marker), f"{self.signal_name or 'another rank'}\n")
        return Preempted()
