"""--profile-steps A:B: a torch.profiler trace of global optimizer steps A to B, one Chrome trace
JSON per rank (`RunPaths.profile_trace`; opens in Perfetto, chrome://tracing and TensorBoard's
profiler plugin), with CPU activity and, on a GPU, its kernels.

The loop reports each finished step (`after_step`); the profiler runs from before step A to
after step B, then writes the trace (atomically: a file under its name is complete) and hands it
to `saved` (the W&B run's files). Off, or outside the window, a report is one comparison. A
resumed run that starts inside the window profiles the steps it has left; one that starts past
B writes no trace (the earlier segment's stays). A run that ends or is stopped inside the window
writes the steps it profiled.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from seqtrain.common.atomic import atomic_write_bytes

STEP_SPAN = "train step"  # each profiled step's span in the trace: `train step 12`


class StepProfiler:
    """Profiles the global steps of `window` (first, last) into `trace`; None: never."""

    def __init__(
        self,
        window: tuple[int, int] | None,
        trace: Path,
        device: torch.device,
        saved: Callable[[Path], None],
    ) -> None:
        self.window = window
        self.trace = trace
        self.device = device
        self.saved = saved
        self._profile: profile | None = None
        self._step_span: record_function | None = None

    @contextmanager
    def running(self, steps_done: int) -> Iterator[None]:
        """Around the training loop, which resumes after `steps_done` steps: a trace still
        open when it ends (early stopping, a stop signal, an error) is written."""
        self.after_step(steps_done)
        try:
            yield
        finally:
            self._finish()

    def after_step(self, steps_done: int) -> None:
        """Global step `steps_done` has finished: start before the window's first step, write
        the trace after its last."""
        if self.window is None:
            return
        first, last = self.window
        if self._profile is None and first <= steps_done + 1 <= last:
            self._start()
        elif self._profile is not None:
            self._end_step()
            if steps_done >= last:
                self._finish()
                return
        if self._profile is not None:
            self._begin_step(steps_done + 1)

    def _start(self) -> None:
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self._profile = profile(activities=activities, record_shapes=True)
        self._profile.start()

    def _begin_step(self, step: int) -> None:
        """Name the step's span by its global step (torch's own ProfilerStep#N counts from the
        profiler's start instead)."""
        self._step_span = record_function(f"{STEP_SPAN} {step}")
        self._step_span.__enter__()

    def _end_step(self) -> None:
        if self._step_span is not None:
            self._step_span.__exit__(None, None, None)
            self._step_span = None

    def _finish(self) -> None:
        if self._profile is None:
            return
        self._end_step()
        prof, self._profile = self._profile, None
        prof.stop()
        with tempfile.TemporaryDirectory() as folder:
            exported = Path(folder) / self.trace.name
            prof.export_chrome_trace(str(exported))
            atomic_write_bytes(self.trace, exported.read_bytes())
        self.saved(self.trace)
