"""The GPU tier (`pytest -m gpu`): what only a CUDA device can show. Skipped without one.

Mixed precision (bf16, fp16 with its gradient scaler) through a checkpoint round trip,
channels-last, torch.compile, --stage-on-device, pinned batches, a 1-process NCCL group,
evaluation, MFU and GPU-trained weights loaded on CPU. `python -m experiments.device_check` runs
this tier first on a lent GPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils.constants import SCALER_NAME

from seqtrain import load_model
from seqtrain.components.tracking import read_offline_run
from seqtrain.config import DataConfig, ModelConfig, RunConfig
from seqtrain.data.format import load_manifest
from seqtrain.data.staged import staged_train_loader
from seqtrain.data.stream import train_loader
from seqtrain.distributed import make_accelerator
from seqtrain.step import build_model_and_optimizer
from support.loaders import fresh_plan
from support.training import read_jsonl, run_in_process, train_argv

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")
QUICK = ["--steps-per-epoch", "5", "--log-every", "2"]


def gpu_run(shards: Path, out: Path, name: str, *extra: str) -> Path:
    run_in_process([*train_argv(shards, out, name, "--epochs", "2", *QUICK), *extra])
    return out / name


@pytest.fixture(scope="module")
def bf16_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu_runs")
    return gpu_run(
        tiny_shards, out, "bf16", "--model", "reference", "--mixed-precision", "bf16",
        "--wandb-mode", "offline",
    )  # fmt: skip


def test_bf16_run_trains_and_checkpoints(bf16_run: Path) -> None:
    epochs = read_jsonl(bf16_run / "metrics.jsonl")
    assert len(epochs) == 2
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in epochs)
    assert not (bf16_run / "checkpoints" / "last" / SCALER_NAME).exists()


def test_fp16_run_saves_and_resumes_its_scaler(tiny_shards: Path, tmp_path: Path) -> None:
    run = gpu_run(tiny_shards, tmp_path, "fp16", "--mixed-precision", "fp16", "--wandb-mode",
                  "disabled")  # fmt: skip
    assert (run / "checkpoints" / "last" / SCALER_NAME).is_file()
    gpu_run(tiny_shards, tmp_path, "fp16", "--mixed-precision", "fp16", "--wandb-mode",
            "disabled", "--epochs", "3", "--resume", "auto", "--accept-changes")  # fmt: skip
    assert [e["epoch"] for e in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_fp16_resume_of_bf16_checkpoint_is_one_line_error(
    bf16_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(
            [*train_argv(_shards_of(bf16_run), tmp_path, "fp16", "--epochs", "3", *QUICK),
             "--model", "reference", "--mixed-precision", "fp16", "--wandb-mode", "disabled",
             "--resume", str(bf16_run / "checkpoints" / "last"), "--accept-changes"]
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "no fp16 gradient-scaler state" in err.strip().splitlines()[-1]


def _shards_of(run: Path) -> Path:
    import yaml

    return Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["shards"])


def _clipped_step(precision: str) -> tuple[float, float]:
    """One step of a linear model under --clip-grad-norm 1e-3 at `precision`: the logged
    pre-clip norm and the gradient's norm after clipping."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from seqtrain.components.grad_clip import GradClip

    AcceleratorState._reset_state(reset_partial_state=True)  # another precision per call
    accelerator = Accelerator(mixed_precision=precision)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.0))
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(1)).to(CUDA)
    with accelerator.autocast():
        loss = model(x).float().pow(2).mean()
    accelerator.backward(loss)  # fp16: the loss scaled by the GradScaler (2^16) first
    clip = GradClip(1e-3, accelerator.device)
    clip(accelerator, model)
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    optimizer.step()
    AcceleratorState._reset_state(reset_partial_state=True)
    norm_sum, steps = clip.take_window()
    return norm_sum.item() / steps, clipped.item()


def test_fp16_clipping_unscales_the_gradients_first() -> None:
    """The limit and the logged norm are the true gradient's, not the scaled one's."""
    true_norm, _ = _clipped_step("no")
    norm, clipped = _clipped_step("fp16")
    assert norm == pytest.approx(true_norm, rel=1e-2)
    assert clipped == pytest.approx(1e-3, rel=1e-3)


def test_channels_last_weights_and_inputs_on_gpu() -> None:
    cfg = RunConfig(model=ModelConfig(model="reference", channels_last=True))
    accelerator = make_accelerator(cfg, Path("unused"))
    model, _ = build_model_and_optimizer(cfg, accelerator)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.device.type == "cuda"
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_compiled_run_trains(tiny_shards: Path, tmp_path: Path) -> None:
    run = gpu_run(tiny_shards, tmp_path, "compiled", "--compile", "--wandb-mode", "disabled")
    assert len(read_jsonl(run / "metrics.jsonl")) == 2


def test_staged_batches_on_gpu_equal_the_cpu_ones(tiny_shards: Path) -> None:
    manifest = load_manifest(tiny_shards)
    cfg = DataConfig(shards=tiny_shards, batch_size=16, stage_on_device=True)
    plan = fresh_plan(cfg, epoch=0, steps=3, world_size=1, seed=10)
    on_gpu = staged_train_loader(manifest, plan, 0, 1, CUDA)
    on_cpu = staged_train_loader(manifest, plan, 0, 1, torch.device("cpu"))
    for (gi, gl), (ci, cl) in zip(on_gpu, on_cpu, strict=True):
        assert gi.device.type == "cuda"
        assert torch.equal(gi.cpu(), ci) and torch.equal(gl.cpu(), cl)


def test_staged_run_trains(tiny_shards: Path, tmp_path: Path) -> None:
    run = gpu_run(tiny_shards, tmp_path, "staged", "--stage-on-device", "--wandb-mode", "disabled")
    assert len(read_jsonl(run / "metrics.jsonl")) == 2


def test_batches_for_the_gpu_are_pinned(tiny_shards: Path) -> None:
    manifest = load_manifest(tiny_shards)
    cfg = DataConfig(shards=tiny_shards, batch_size=16, num_workers=1)
    plan = fresh_plan(cfg, epoch=0, steps=3, world_size=1, seed=0)
    images, labels = next(iter(train_loader(manifest, cfg, plan, 0, 1, device=CUDA)))
    assert images.is_pinned() and labels.is_pinned()


def test_one_process_nccl_group(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import torch, torch.distributed as dist\n"
        "from seqtrain.config import RunConfig\n"
        "from seqtrain.distributed import all_reduce_sum, join_processes\n"
        "state = join_processes(RunConfig())\n"
        "total = all_reduce_sum(torch.ones(1, device=state.device))\n"
        "print('backend', dist.get_backend(), 'world', dist.get_world_size(), total.item())\n"
        "dist.destroy_process_group()\n"
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "1", str(probe)],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backend nccl world 1 1.0" in result.stdout


def test_evaluate_on_gpu_matches_cpu(bf16_run: Path, tmp_path: Path) -> None:
    shards = _shards_of(bf16_run)
    results = {}
    for where in ("gpu", "cpu"):
        out = tmp_path / f"{where}.json"
        flags = ["--cpu"] if where == "cpu" else []
        run_in_process(["evaluate", "--checkpoint", str(bf16_run), "--shards", str(shards),
                        "--json", str(out), "--num-workers", "0", *flags])  # fmt: skip
        results[where] = json.loads(out.read_text())
    assert (
        results["gpu"]["count"]
        == results["cpu"]["count"]
        == load_manifest(shards).num_samples("test")
    )
    # bf16 autocast on the GPU (auto precision), fp32 on CPU: close, not identical.
    assert results["gpu"]["loss"] == pytest.approx(results["cpu"]["loss"], rel=0.05)
    assert abs(results["gpu"]["exact_match"] - results["cpu"]["exact_match"]) <= 0.05


def test_mfu_is_a_fraction(bf16_run: Path) -> None:
    history = read_offline_run(bf16_run / "wandb")["history"]
    mfu = [v for row in history for k, v in row.items() if k.startswith("train/mfu")]
    if not mfu:
        pytest.skip(f"no peak FLOP/s known for {torch.cuda.get_device_name()}")
    assert all(0 < v < 1 for v in mfu), mfu


def test_gpu_trained_export_loads_on_cpu(bf16_run: Path) -> None:
    model = load_model(bf16_run / "export")
    assert all(p.device.type == "cpu" for p in model.parameters())
    images = torch.rand(4, 1, 28, 84)
    on_cpu = model(images)
    on_gpu = model.to(CUDA)(images.to(CUDA)).cpu()
    assert on_cpu.shape == (4, 3, 11)
    torch.testing.assert_close(on_cpu, on_gpu, atol=1e-2, rtol=1e-2)
