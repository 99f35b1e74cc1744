"""Stop signals of a training process: a flag from its first moment, and kept from its workers.

A cluster asks a job to stop with a signal (SLURM's time-limit warning, a preemption's SIGTERM,
torch's agent passing one on), and it may arrive at any moment: while Python imports torch,
while shards are checked, in a step, in validation, while a checkpoint is written. Two rules
make every such moment end in a saved, resumable stop:

1. `record_from_start` (called before anything slow) turns each stop signal into a flag, which
   `seqtrain.components.preemption` reads at its next agreed check: no moment is left where the
   signal's default action (death, exit 1, a job left FAILED) applies.
2. Loader workers never act on a stop signal (`shielded_worker_start`, `shield_worker`):
   SLURM signals every process of a step, a shell or `timeout` signals the process group, and
   torch's agent stops a rank with `killpg`, so workers get the rank's signals; a worker dying
   of one made the rank fail with "DataLoader worker ... is killed by signal". A worker keeps
   the signals blocked and reads them itself: it ends only when its own rank asks (SIGTERM
   from the rank: torch's and multiprocessing's shutdown) or when the rank is gone, within
   `WORKER_POLL_SECONDS` however the rank ended (SIGKILL included), so none outlives it.

Torch-free: imported by `seqtrain train` before torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

# SIGTERM and every --preempt-signal choice; SIGINT too for workers (Ctrl-C is the rank's).
PREEMPT_CHOICES = ("USR1", "USR2", "HUP", "QUIT")
RECORDABLE = (signal.SIGTERM, *(signal.Signals[f"SIG{name}"] for name in PREEMPT_CHOICES))
WORKER_IGNORED = frozenset({*RECORDABLE, signal.SIGINT})
WORKER_POLL_SECONDS = 0.5


def stop_signals(preempt_signal: str) -> list[signal.Signals]:
    """SIGTERM, plus --preempt-signal unless it is "none"."""
    extra = [] if preempt_signal == "none" else [signal.Signals[f"SIG{preempt_signal}"]]
    return [signal.SIGTERM, *extra]


class StopFlag:
    """Records the first stop signal instead of dying of it; gives the handlers back after."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def install(self, signals: Iterable[signal.Signals]) -> None:
        """Record `signals` from now on (again: no change for those already recorded)."""
        for sig in signals:
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._record)

    def keep_only(self, signals: Iterable[signal.Signals]) -> None:
        """Give back every recorded signal but `signals`; one of them that already arrived is
        raised again, so it acts now as it would have without the early flag."""
        keep = set(signals)
        for sig in [s for s in self._previous if s not in keep]:
            signal.signal(sig, self._previous.pop(sig))
            if self.received == sig.name:
                self.received = None
                signal.raise_signal(sig)

    def restore(self) -> None:
        """Every signal back to its handler from before `install`, the flag cleared (the run
        that acted on it is over)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        self.received = None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the step in flight, collectives and file writes are left undisturbed.
        self.received = self.received or signal.Signals(signum).name


# One per process: the handler is process-wide, as is the signal it records.
STOP_FLAG = StopFlag()


def record_from_start() -> None:
    """Record SIGTERM and every possible --preempt-signal before the flags are even parsed;
    `STOP_FLAG.keep_only(stop_signals(...))` narrows it once they are."""
    STOP_FLAG.install(RECORDABLE)


@contextlib.contextmanager
def shielded_worker_start() -> Iterator[None]:
    """Around the start of loader workers: the stop signals stay blocked in this thread while
    it forks, so a forked worker inherits them blocked (no moment where one can kill it before
    `shield_worker` runs); signals that arrive meanwhile reach this process afterwards."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_IGNORED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def shield_worker(_worker_id: int = 0) -> None:
    """A loader worker's init (`worker_init_fn`): see the module docstring, rule 2."""
    signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_IGNORED)  # also when not started shielded
    rank = os.getppid()
    threading.Thread(
        target=_serve_rank, args=(rank, os._exit), name="rank-watch", daemon=True
    ).start()


def _serve_rank(rank: int, exit_now: Callable[[int], Any]) -> None:
    """Consume the worker's stop signals; exit when the rank asks or is gone."""
    while True:
        info = signal.sigtimedwait(WORKER_IGNORED, WORKER_POLL_SECONDS)
        asked = info is not None and info.si_signo == signal.SIGTERM and info.si_pid == rank
        if asked or os.getppid() != rank:
            # 0, as torch's own worker handler exits on its parent's SIGTERM: no error report.
            exit_now(0)
            return
