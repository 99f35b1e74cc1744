"""Device and process-group decisions: auto precision, NCCL peer failures, per-rank RNG
streams and --deterministic (GPU facts faked: this machine has none)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.distributed import DistBackendError

import seqtrain.distributed
import seqtrain.train
from seqtrain.common.errors import UserError
from seqtrain.config import RunConfig, TrainConfig
from seqtrain.distributed import (
    adopt_srun_rank,
    cpu_has_native_bf16,
    first_host,
    peer_failures_reported,
    resolved_precision,
    seed_rank_streams,
)
from support.training import run_in_process, train_argv

AUTO_ON_GPU = RunConfig(train=TrainConfig(mixed_precision="auto"))
AUTO_ON_CPU = RunConfig(train=TrainConfig(mixed_precision="auto", cpu=True))


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    """A visible CUDA GPU of a chosen compute capability; torch's default bf16 probe says yes
    for every one of them, as it does for emulated bf16."""

    def with_capability(capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)

    return with_capability


@pytest.mark.parametrize(
    ("gpu", "capability", "expected"),
    [
        ("V100", (7, 0), "no"),
        ("T4", (7, 5), "no"),
        ("A100", (8, 0), "bf16"),
        ("H100", (9, 0), "bf16"),
    ],
)
def test_auto_picks_bf16_only_on_gpus_with_bf16_tensor_cores(fake_gpu, gpu, capability, expected):
    fake_gpu(capability)
    assert resolved_precision(AUTO_ON_GPU) == expected, gpu


def test_explicit_precision_is_kept(fake_gpu):
    fake_gpu((7, 0))
    assert resolved_precision(RunConfig(train=TrainConfig(mixed_precision="bf16"))) == "bf16"


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 {flags}\n\n" * 2)
    return path


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("avx2 avx512f avx512bw", False),  # AVX-512 without bf16: emulated, slower than fp32
        ("avx2 avx512f avx512_bf16", True),  # e.g. AMD Zen 4, Intel Cooper Lake
        ("avx2 amx_bf16 amx_tile", True),  # Intel Sapphire Rapids
    ],
)
def test_native_bf16_cpu_is_read_from_its_flags(tmp_path, flags, native):
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, flags)) is native


def test_unknown_cpu_counts_as_without_bf16(tmp_path):
    assert cpu_has_native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize(("flags", "expected"), [("avx512_bf16", "bf16"), ("avx2", "no")])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, tmp_path, flags, expected):
    cpuinfo = _cpuinfo(tmp_path, flags)
    monkeypatch.setattr(
        seqtrain.distributed, "cpu_has_native_bf16", lambda: cpu_has_native_bf16(cpuinfo)
    )
    assert resolved_precision(AUTO_ON_CPU) == expected


def test_precision_is_decided_after_the_rank_is_bound_to_its_gpu(monkeypatch, tmp_path):
    # Probing before join_processes would ask GPU 0 on every rank (and open a context there).
    calls = []
    joined = SimpleNamespace(num_processes=1)  # what the batch sizes need of the process group
    monkeypatch.setattr(
        seqtrain.train, "join_processes", lambda cfg: calls.append("join") or joined
    )
    monkeypatch.setattr(
        seqtrain.train, "resolved_precision", lambda cfg: calls.append("precision") or "no"
    )
    cfg = RunConfig()
    cfg.data.shards = tmp_path / "no-shards"
    cfg.train.run_name = "r"
    with pytest.raises(UserError):  # stops at the missing manifest, just after
        seqtrain.train._build(cfg)
    assert calls == ["join", "precision"]


# What the surviving ranks' Python sees when NCCL gives up on a peer (torch >= 2.4 wording;
# raised as DistBackendError where the wait blocks in Python, e.g. TORCH_NCCL_BLOCKING_WAIT=1).
NCCL_FAILURES = [
    "[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=78, OpType=ALLREDUCE,"
    " NumelIn=2, NumelOut=2, Timeout(ms)=1800000) ran for 1800043 milliseconds before timing out.",
    "NCCL communicator was aborted on rank 1. Original reason for failure was: [Rank 1] Watchdog "
    "caught collective operation timeout",
    "NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.hpp:275, remote process exited"
    " or there was a network error, NCCL version 2.21.5\nncclRemoteError: A call failed possibly "
    "due to a network error or a remote process exiting prematurely.",
]


@pytest.mark.parametrize("message", NCCL_FAILURES)
def test_nccl_peer_failures_end_with_one_line(message):
    with pytest.raises(UserError) as raised, peer_failures_reported():
        raise DistBackendError(f"{message}\nException raised from checkTimeout at ...\nframe #0")
    (line,) = str(raised.value).splitlines()
    assert line.startswith("another process of the job died or stopped responding (")
    assert "rerun with --resume auto" in line
    assert "frame #0" not in line


def test_other_backend_errors_keep_their_traceback():
    with pytest.raises(DistBackendError), peer_failures_reported():
        raise DistBackendError("NCCL error: invalid usage (run with NCCL_DEBUG=WARN for details)")


def _dropout_mask() -> torch.Tensor:
    return torch.nn.functional.dropout(torch.ones(1000), 0.5) > 0


def test_each_rank_draws_its_own_reproducible_dropout_stream():
    masks = []
    for rank in (0, 1, 0):
        torch.manual_seed(123)  # whatever came before (the model's seeded init) does not matter
        seed_rank_streams(7, rank)
        masks.append((_dropout_mask(), np.random.rand(), torch.rand(1)))
    (mask0, np0, t0), (mask1, np1, t1), (again, np_again, t_again) = masks
    assert not mask0.equal(mask1) and np0 != np1 and not t0.equal(t1)
    assert mask0.equal(again) and np0 == np_again and t0.equal(t_again)
    seed_rank_streams(8, 0)  # another seed: another stream, not rank 1's
    assert not _dropout_mask().equal(mask0) and not _dropout_mask().equal(mask1)


@pytest.fixture
def restore_determinism(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic = before[1]
    torch.backends.cudnn.benchmark = benchmark


def test_deterministic_flag_sets_torch_state_and_trains(tiny_shards, tmp_path, restore_determinism):
    torch.backends.cudnn.benchmark = True
    assert not torch.are_deterministic_algorithms_enabled()
    argv = train_argv(tiny_shards, tmp_path, "det", "--epochs", "1", "--steps-per-epoch", "3")
    run_in_process([*argv, "--deterministic", "--wandb-mode", "disabled"])
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (tmp_path / "det" / "test_metrics.json").is_file()


# Modules whose CUDA backward torch documents as raising under use_deterministic_algorithms.
NO_DETERMINISTIC_CUDA_BACKWARD = (
    torch.nn.AdaptiveAvgPool2d,
    torch.nn.AdaptiveMaxPool2d,
    torch.nn.FractionalMaxPool2d,
    torch.nn.ReflectionPad2d,
    torch.nn.Upsample,
)


@pytest.mark.parametrize("name", ["reference", "slotnet", "slotnet_deep"])
def test_models_train_under_deterministic_on_gpu(name):
    from seqtrain.models import build_model

    model = build_model(name)
    bad = [m for m in model.modules() if isinstance(m, NO_DETERMINISTIC_CUDA_BACKWARD)]
    assert not bad, f"--deterministic would stop {name} on a GPU: {bad}"


def test_global_average_pool_is_adaptive_average_pool_to_one():
    from seqtrain.models.slotnet import GlobalAvgPool

    x = torch.randn(4, 8, 7, 7)
    torch.testing.assert_close(GlobalAvgPool()(x), torch.nn.AdaptiveAvgPool2d(1)(x))


SRUN_TASK = {"SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
             "SLURM_STEP_NODELIST": "gpu[007-010]", "SLURM_JOB_ID": "123456"}  # fmt: skip


def test_an_srun_task_of_a_multi_task_step_is_a_rank() -> None:
    environ = dict(SRUN_TASK)
    adopt_srun_rank(environ)
    assert (environ["RANK"], environ["WORLD_SIZE"], environ["LOCAL_RANK"]) == ("9", "16", "1")
    assert environ["MASTER_ADDR"] == "gpu007"
    assert environ["MASTER_PORT"] == str(20000 + 123456 % 20000)  # the same after a requeue


@pytest.mark.parametrize(
    "environ",
    [
        {**SRUN_TASK, "RANK": "3"},  # a launcher's rank inside an srun step: its own variables
        {**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "1"},  # `srun -n 1` or `salloc`'s one task
        {"SLURM_JOB_ID": "5", "SLURM_PROCID": "0", "SLURM_NTASKS": "8"},  # the batch shell
    ],
)
def test_other_processes_under_slurm_are_left_alone(environ: dict[str, str]) -> None:
    before = dict(environ)
    adopt_srun_rank(environ)
    assert environ == before


def test_the_rendezvous_given_by_the_user_wins() -> None:
    environ = {**SRUN_TASK, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"}
    adopt_srun_rank(environ)
    assert (environ["MASTER_ADDR"], environ["MASTER_PORT"]) == ("10.0.0.1", "29400")


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [("vm", "vm"), ("gpu[007-010,12],cpu1", "gpu007"), ("n1,n2", "n1"),
     ("rack[1-2]-node[01-02]", "rack1-node01"), ("a[3,5]", "a3")],
)  # fmt: skip
def test_first_host_of_a_node_list(nodelist: str, first: str) -> None:
    assert first_host(nodelist) == first
