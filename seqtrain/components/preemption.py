"""Preemption and the wall-clock checkpoint cadence: stop at a step boundary, saved, resumable.

A signal handler only records that SIGTERM (or --preempt-signal) arrived, from the process's
first moment (`seqtrain.common.stop_signals`: loader workers never act on them). Every
--preempt-check-every steps the ranks agree on two flags, "some rank was signalled" and
"--checkpoint-minutes have passed on some rank's clock", without waiting for the device: one
process reads its own flags; several start an asynchronous all-reduce (MAX) of them at each
check and act on the previous check's result (long finished by then), so every rank reaches
the same decision at the same step, one check later than the signal's own. A signalled run saves
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
        self._exchange: _LaggedMax | None = None  # with several processes, from the first check

    def __enter__(self) -> PreemptionWatch:
        """Record the signals while training (those that arrived since the process started
        count: `STOP_FLAG`); `close` (or leaving the block, however it is left) gives them
        back, so a failed run leaves no handler behind in the process."""
        STOP_FLAG.install(stop_signals(self.cfg.preempt_signal))
        self.clock_started = time.monotonic()  # start-up is not training time
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None and self._exchange is not None:
            self._exchange.drain()  # every rank started it: it completes
        self.close()

    def close(self) -> None:
        """Give the signals back to their previous handlers (the run is over)."""
        STOP_FLAG.restore()

    def saved(self) -> None:
        """`last` was just written (an epoch's end): the --checkpoint-minutes clock starts over,
        so no timed save follows it a step later (nor one a check in flight asked for)."""
        self.clock_started = time.monotonic()
        if self._exchange is not None:
            self._exchange.clock_stale = True

    @property
    def signal_name(self) -> str | None:
        return STOP_FLAG.received

    def poll(self, step: int) -> Decision:
        """Collective every --preempt-check-every steps (all ranks call it at the same steps)."""
        if step % self.cfg.preempt_check_every:
            return Decision()
        minutes = self.cfg.checkpoint_minutes
        clock_due = minutes > 0 and time.monotonic() - self.clock_started >= minutes * 60
        signalled = self.signal_name is not None
        if _processes() > 1:
            self._exchange = self._exchange or _LaggedMax(self.device)
            signalled, clock_due = self._exchange.exchange(signalled, clock_due)
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


def _processes() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _LaggedMax:
    """Two flags' maximum over all ranks, one exchange late: `exchange` starts this check's
    asynchronous all-reduce and returns the previous one's result, which every rank reads at the
    same check. Fixed device buffers (the flags come from a table of their four values: no host
    data is copied in); on a GPU the result comes back by a non-blocking copy into pinned memory
    behind the collective, waited for through an event a whole check later."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._table = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.int32,
                                   device=device)  # fmt: skip
        self._flags = torch.zeros(2, dtype=torch.int32, device=device)
        self._host = torch.zeros(2, dtype=torch.int32, pin_memory=self._cuda)
        self._done = torch.cuda.Event() if self._cuda else None
        self._work: torch.distributed.Work | None = None
        self.clock_stale = False  # `last` was saved while an exchange was in flight

    def exchange(self, signalled: bool, clock_due: bool) -> tuple[bool, bool]:
        agreed = self._result()
        self._flags.copy_(self._table[2 * signalled + clock_due])
        self._work = torch.distributed.all_reduce(
            self._flags, op=torch.distributed.ReduceOp.MAX, async_op=True
        )
        if self._cuda:
            self._work.wait()  # the current stream waits for the collective; the host does not
            self._host.copy_(self._flags, non_blocking=True)
            self._done.record()
        return agreed

    def _result(self) -> tuple[bool, bool]:
        if self._work is None:
            return False, False
        if self._cuda:
            self._done.synchronize()  # recorded a check ago: done
        else:
            self._work.wait()
            self._host.copy_(self._flags)
        self._work = None
        signalled, clock_due = self._host.tolist()
        stale, self.clock_stale = self.clock_stale, False
        return bool(signalled), bool(clock_due) and not stale

    def drain(self) -> None:
        """Wait for the exchange in flight (at the end of the run)."""
        self._result()
