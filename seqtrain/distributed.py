"""Accelerate and device concerns: the process group, precision, device transfer, model placement.

Nothing else in seqtrain reads rank environment variables or picks devices: the loop asks the
Accelerator (built here) and these helpers.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator, MutableMapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list, gather_object, reduce, set_seed
from torch import nn

from seqtrain.common.errors import UserError
from seqtrain.components import trackers
from seqtrain.components.parent_watch import end_with_parent
from seqtrain.config import RunConfig
from seqtrain.data.global_batch import batch_sizes
from seqtrain.data.stream import images_to_float

T = TypeVar("T")
# --sync-batchnorm auto syncs a BatchNorm model's statistics on several GPU processes whose
# micro-batch is below this many samples: under it, per-process statistics get noisy.
SYNC_BATCHNORM_BELOW = 32


def use_cpu(cfg: RunConfig) -> bool:
    return cfg.train.cpu or not torch.cuda.is_available()


def resolved_precision(cfg: RunConfig) -> str:
    """`--mixed-precision` with `auto` decided: bf16 where the device computes bf16 natively (a
    GPU with bf16 tensor cores, a CPU with AVX512-BF16 or AMX), else no (fp32). Call it after
    `join_processes`, which binds each rank to its own GPU."""
    if cfg.train.mixed_precision != "auto":
        return cfg.train.mixed_precision
    native = cpu_has_native_bf16() if use_cpu(cfg) else gpu_has_native_bf16()
    return "bf16" if native else "no"


def gpu_has_native_bf16() -> bool:
    """This rank's GPU has bf16 tensor cores (compute capability 8.0, Ampere, or newer).
    `torch.cuda.is_bf16_supported()` also says yes for V100/T4, which only emulate it, slowly."""
    return torch.cuda.get_device_capability() >= (8, 0)


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """The CPU has bf16 instructions (the avx512_bf16 or amx_bf16 flag; Linux only): there bf16
    autocast trained the reference 1.6x faster than fp32 (issue 12's measurement)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return False
    flags = {f for ln in lines if ln.startswith("flags") for f in ln.partition(":")[2].split()}
    return not flags.isdisjoint({"avx512_bf16", "amx_bf16"})


def apply_determinism(cfg: RunConfig) -> None:
    """With --deterministic, only deterministic kernels (an op without one raises) and no cuDNN
    autotuning. Before any CUDA work: cuBLAS reads its workspace setting at handle creation."""
    if not cfg.train.deterministic:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def seed_rank_streams(seed: int, process_index: int) -> None:
    """Reseed Python's, NumPy's and torch's (CPU and CUDA) global RNGs with a stream of this
    rank's own, a pure function of (seed, rank): dropout masks differ between replicas yet
    rerun identically. Call it after the model is built from `seed` (same init on all ranks)."""
    rank_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])
    random.seed(rank_seed)
    np.random.seed(rank_seed)
    torch.manual_seed(rank_seed)


def join_processes(cfg: RunConfig) -> PartialState:
    """Join the launcher's process group before anything else needs it.

    `cpu=True` on a GPU-less machine makes `accelerate launch --multi_gpu` and `torchrun` form
    one gloo group of CPU ranks instead of N independent rank-0-of-1 runs.
    """
    if cfg.train.mixed_precision == "fp16" and use_cpu(cfg):
        raise UserError("--mixed-precision fp16 needs a GPU (use bf16 on CPU)")
    apply_determinism(cfg)
    adopt_srun_rank(os.environ)
    state = PartialState(cpu=use_cpu(cfg), timeout=timedelta(seconds=cfg.train.dist_timeout))
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # a rank started by torch's elastic agent
        end_with_parent(f"the launcher of rank {state.process_index} died; the rank ends too")
    return state


def adopt_srun_rank(environ: MutableMapping[str, str]) -> None:
    """A task of an `srun` step of several tasks is one rank (launch/slurm/train.sbatch starts
    one per GPU, with no launcher in between, so each rank gets SLURM's signals itself): the
    variables torch's launchers set are filled in from SLURM's. A launcher's own (RANK set),
    a single task and the batch shell (no SLURM_STEP_NUM_TASKS) are left alone.
    The rendezvous: MASTER_ADDR, else the step's first node; MASTER_PORT, else one derived from
    the job id (jobs sharing a node do not collide; a requeued job gets the same)."""
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS", "1"))
    if "RANK" in environ or tasks < 2:
        return
    environ["RANK"] = environ["SLURM_PROCID"]
    environ["WORLD_SIZE"] = str(tasks)
    environ["LOCAL_RANK"] = environ["SLURM_LOCALID"]
    environ.setdefault("MASTER_ADDR", first_host(environ["SLURM_STEP_NODELIST"]))
    environ.setdefault("MASTER_PORT", str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000))


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[007-010,12],cpu1" -> "gpu007"."""
    host = re.split(r",(?![^\[]*\])", nodelist, maxsplit=1)[0]  # commas inside [] are ranges
    return re.sub(r"\[([^\]\-,]+)[^\]]*\]", r"\1", host)


# How a dead or frozen peer surfaces as a Python error in the surviving ranks' collectives.
# gloo and the TCP store: "Timed out waiting <ms>", "Connection closed/reset by peer".
# NCCL (torch.distributed.DistBackendError, raised only where a wait blocks in Python, e.g. with
# TORCH_NCCL_BLOCKING_WAIT=1; otherwise the watchdog aborts the process, see docs/multi-node.md):
# "[Rank r] Watchdog caught collective operation timeout: WorkNCCL(...) ran for N milliseconds
# before timing out.", "NCCL communicator was aborted on rank r.", and ncclRemoteError's "NCCL
# error: remote process exited or there was a network error".
_PEER_FAILURES = (
    "Timed out waiting",
    "Connection closed by peer",
    "Connection reset by peer",
    "collective operation timeout",
    "NCCL communicator was aborted",
    "remote process exited or there was a network error",
)


@contextlib.contextmanager
def peer_failures_reported() -> Iterator[None]:
    """Turn a collective's failure caused by another rank (killed, or hung past
    --dist-timeout) into one UserError line instead of a backend traceback."""
    try:
        yield
    except RuntimeError as e:
        cause = next((ln for ln in str(e).splitlines() if any(p in ln for p in _PEER_FAILURES)), "")
        if not cause:
            raise
        raise UserError(
            f"another process of the job died or stopped responding ({cause.strip()[:200]}); "
            "rerun with --resume auto"
        ) from None


def from_main_process(value: Any) -> Any:
    """The main process's `value` on every rank (e.g. a timestamp that must agree)."""
    return broadcast_object_list([value], from_process=0)[0]


def decided_on_main_process(decide: Callable[[], T]) -> T:
    """`decide()` run on the main process only, its answer (or its UserError) on every rank.

    For what the ranks must agree on although their views may differ (a network file system
    caches file attributes per node): every rank returns the same value or raises the same
    one-line error, so none goes on alone into a collective the others never reach.
    """
    outcome: tuple[bool, Any] = (True, None)
    if PartialState().is_main_process:
        try:
            outcome = (True, decide())
        except UserError as e:
            outcome = (False, str(e))
    ok, answer = from_main_process(outcome)
    if not ok:
        raise UserError(answer)
    return answer


def shared_across_processes(work: Callable[[int, int], dict]) -> dict:
    """Each process runs `work(part, num_parts)` on its share; every process gets the union of
    the returned dicts (a collective: all processes must call it)."""
    state = PartialState()
    merged: dict = {}
    for one in gather_object([work(state.process_index, state.num_processes)]):
        merged.update(one)
    return merged


def seed_resumed_rank(seed: int, process_index: int, step: int) -> None:
    """Seed python, numpy and torch of a rank that has no saved RNG state (a run resumed on
    more processes than it was saved with): deterministic, and its own, not a copy of another
    rank's stream."""
    derived = np.random.SeedSequence([seed, process_index, step]).generate_state(1)[0]
    set_seed(int(derived))


def make_accelerator(cfg: RunConfig, run_dir: Path) -> Accelerator:
    return Accelerator(
        cpu=use_cpu(cfg),
        mixed_precision=resolved_precision(cfg),
        log_with=trackers.chosen(cfg, run_dir) or None,  # --report-to
        project_dir=str(run_dir),
        # ReduceLROnPlateau is stepped by us once per epoch, never per optimizer step.
        step_scheduler_with_optimizer=False,
    )


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over all ranks (a copy; the input is left unchanged)."""
    return reduce(tensor, reduction="sum")


def to_device(
    images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a uint8 batch to the device and convert it there: a quarter of the bytes to copy."""
    images = images_to_float(images.to(device, non_blocking=True))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def prepare_model(model: nn.Module, cfg: RunConfig, device: torch.device) -> nn.Module:
    """Apply memory format and compilation from outside the model code."""
    # Stacked --members weights are 5-D: their members were converted before stacking.
    if cfg.model.channels_last and cfg.train.members == 1:
        model = model.to(memory_format=torch.channels_last)
    if cfg.model.compile:
        reason = _compile_unsupported(device)
        if reason:
            print(f"seqtrain: --compile skipped: {reason}")
        else:
            # In-place compile keeps state-dict keys unchanged, so checkpoints stay portable.
            model.compile()
    return model


def with_sync_batchnorm(
    model: nn.Module, cfg: RunConfig, processes: int, device: torch.device
) -> nn.Module:
    """The model with torch's SyncBatchNorm in place of its BatchNorm layers where
    --sync-batchnorm asks for it (see its --help); `on` off a GPU is a UserError. Before
    `accelerator.prepare`: the conversion needs the bare model."""
    choice = cfg.model.sync_batchnorm
    if choice == "on" and device.type != "cuda":
        raise UserError(
            "--sync-batchnorm on needs GPU processes: torch's SyncBatchNorm does not run on CPU "
            "(use --sync-batchnorm auto or off)"
        )
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if choice == "auto":
        small = batch_sizes(cfg.data, processes).micro < SYNC_BATCHNORM_BELOW
        choice = "on" if small and device.type == "cuda" else "off"
    # --members: each member's statistics are its own (on "on", see RunConfig's check).
    if choice == "off" or not has_batchnorm or processes == 1 or cfg.train.members > 1:
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def syncs_batchnorm(model: nn.Module) -> bool:
    """The (prepared) model synchronizes BatchNorm statistics across processes."""
    return any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def _compile_unsupported(device: torch.device) -> str | None:
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python/platform"
    if device.type == "cpu" and shutil.which("g++") is None and shutil.which("clang++") is None:
        return "torch.compile on CPU needs a C++ compiler"
    return None
