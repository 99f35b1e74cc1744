"""No orphans: a process whose launcher died ends by itself within seconds.

torch's elastic agent (behind `accelerate launch` and `torchrun`) starts every rank in a
session of its own, so when the launcher is killed with SIGKILL, nothing reaches the ranks:
they would train on, still writing into the run folder. A watchdog thread notices the death
(the process is re-parented, so its parent pid changes) and ends the process at once: its
peers may be gone too, so no collective (a checkpoint, a coordinated exit) could complete.
The kernel then drops the run folder's lock.

Why a thread and not the kernel's parent-death signal (prctl PR_SET_PDEATHSIG): that signal
fires when the *thread* that started the child exits, not the launcher process, which would
kill healthy ranks of a launcher that starts them from a worker thread.
"""

from __future__ import annotations

import os
import sys
import threading
import time

POLL_SECONDS = 1.0
EXIT_ORPHANED = 1


def end_with_parent(message: str, poll_seconds: float = POLL_SECONDS) -> None:
    """From now on, when this process's parent dies, print `message` and exit at once."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent or parent == 1:  # 1: orphaned before the watch began
                print(f"seqtrain: error: {message} (launcher pid {parent})", file=sys.stderr)
                sys.stderr.flush()
                os._exit(EXIT_ORPHANED)  # no cleanup: it could wait on vanished peers
            time.sleep(poll_seconds)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
