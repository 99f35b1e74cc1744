"""--capture: the whole training step recorded once as a CUDA graph and replayed.

A step of the small models here is a few hundred tiny kernels; launching them from Python costs
more host time than the GPU spends computing them. Recorded once as a CUDA graph (forward,
backward, clipping, Adam, the weight average and the loss windows: everything `TrainStep` does
on the device) and replayed, a step costs one launch. A graph replays fixed addresses, so the
step reads its batch from fixed input buffers the host copies each batch into, and every tensor
it reads or writes keeps its storage (parameters, gradients zeroed in place, optimizer state, the
LR and beta1 tensors the schedules overwrite, the weight average's count, the loss windows).
The first WARMUP_STEPS steps run eagerly on a side stream (CUDA's lazy initialisations, cuDNN's
autotuning, any torch.compile, the optimizer's state), then the next step is recorded and
replayed; every step trains (the warm-up steps are real ones).

The graph holds where it can: one CUDA process (DDP's gradient all-reduce is not captured: with
several processes the step stays eager), no fp16 (its GradScaler reads the device at every
step), skip-blank nets on their static path (`use_static_shapes`). `--capture auto` (the default)
captures where it holds and says once in the log why not elsewhere (the CPU always runs eagerly);
`on` makes a case where it cannot hold a one-line error; `off` keeps the eager step. A batch of
another shape than the recorded one runs eagerly. cuDNN's autotuner is switched on wherever the
shapes are static (not under --deterministic).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from seqtrain.common.errors import UserError
from seqtrain.config import RunConfig
from seqtrain.models.slotnet import SlotNet, use_static_shapes

WARMUP_STEPS = 3  # eager steps on a side stream before the capture (torch's docs use 3)
StepMode = Literal["eager", "static", "graph"]  # static: fixed buffers, run eagerly (tests, CPU)


@dataclass(frozen=True)
class CaptureChoice:
    mode: StepMode
    line: str  # said once in the log


def choose_capture(cfg: RunConfig, device: torch.device, processes: int) -> CaptureChoice:
    """The step's mode under --capture on this device and number of processes; a UserError
    where --capture on cannot hold."""
    if cfg.model.capture == "off":
        return CaptureChoice("eager", "training step: eager (--capture off)")
    reason = _refusal(cfg, device, processes)
    if reason is None:
        line = f"training step: captured as a CUDA graph after {WARMUP_STEPS} eager steps"
        return CaptureChoice("graph", line)
    if cfg.model.capture == "on":
        raise UserError(f"--capture on: {reason} (use --capture auto or off)")
    return CaptureChoice("eager", f"training step: eager ({reason})")


def _refusal(cfg: RunConfig, device: torch.device, processes: int) -> str | None:
    if device.type != "cuda":
        return "CUDA graphs need a GPU; this run trains on the CPU"
    if processes > 1:
        return f"{processes} processes: DDP's gradient all-reduce is not captured"
    if cfg.train.mixed_precision == "fp16":
        return "fp16's gradient scaler reads the device at every step (use bf16)"
    return None


def prepare_for_mode(model: nn.Module, mode: StepMode, cfg: RunConfig) -> None:
    """Skip-blank nets on their static path for a captured (or static) step; cuDNN's autotuner
    on where the step's shapes are static (a CUDA run that is not --deterministic)."""
    if mode != "eager":
        use_static_shapes(model, True)
    device = next(model.parameters()).device
    if device.type == "cuda" and not cfg.train.deterministic:
        torch.backends.cudnn.benchmark = mode != "eager" or not _dynamic_shapes(model, device)


def _dynamic_shapes(model: nn.Module, device: torch.device) -> bool:
    return any(
        isinstance(m, SlotNet) and m.skip_blank and not m.takes_static_path(device)
        for m in model.modules()
    )


class GraphedStep:
    """`body(inputs)` on fixed device buffers holding each batch: eagerly for WARMUP_STEPS
    steps, then recorded as a CUDA graph and replayed (mode "graph"); always eagerly (mode
    "static"). `fallback`, if given, is told why a failed capture left the step eager (else
    the failure is a UserError). `seconds`: time spent recording."""

    def __init__(
        self,
        body: Callable[[tuple[torch.Tensor, ...]], None],
        device: torch.device,
        graph: bool,
        fallback: Callable[[str], None] | None = None,
    ) -> None:
        self._body, self._device, self._graph_wanted = body, device, graph
        self._fallback = fallback
        self.inputs: tuple[torch.Tensor, ...] | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._eager_steps = 0
        self.seconds = 0.0

    def __call__(self, batch: Sequence[torch.Tensor]) -> None:
        if self.inputs is None:
            self.inputs = tuple(torch.empty_like(t, device=self._device) for t in batch)
        if [t.shape for t in batch] != [t.shape for t in self.inputs]:
            self._body(tuple(t.to(self._device, non_blocking=True) for t in batch))
            return
        for buffer, tensor in zip(self.inputs, batch, strict=True):
            buffer.copy_(tensor, non_blocking=True)
        if self._graph is not None:
            self._graph.replay()
        elif not self._graph_wanted:
            self._body(self.inputs)
        elif self._eager_steps < WARMUP_STEPS:
            self._warm_up()
        else:
            self._record()

    def _warm_up(self) -> None:
        side = torch.cuda.Stream(self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):
            self._body(self.inputs)
        torch.cuda.current_stream(self._device).wait_stream(side)
        self._eager_steps += 1

    def _record(self) -> None:
        started = time.perf_counter()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._body(self.inputs)
        except Exception as error:  # any failure to record leaves the step eager
            self._graph_wanted = False
            reason = f"capturing the training step failed ({type(error).__name__}: {error})"
            if self._fallback is None:
                raise UserError(f"--capture on: {reason}") from error
            self._fallback(f"{reason}; it runs eagerly")
            self._body(self.inputs)  # nothing ran while recording: this step trains now
            return
        self.seconds += time.perf_counter() - started
        self._graph = graph
        graph.replay()  # recording ran nothing: the step it recorded trains now
