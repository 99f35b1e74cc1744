"""Step overheads: what the data path and bookkeeping cost next to one training step, as ratios.

    .venv/bin/python -m bench.step_overheads [--samples 20000] [--workers 2] [--steps 50]
        [--batch-size 128] [--cpu] [--json-out FILE]

On the training device (CUDA when present, else CPU), in one run:
- the per-step loss bookkeeping: `LossWindow.add` (three kernels into fixed device buffers) and
  the naive float64 sum + finite check it replaced (13 tiny kernels), each per step and as a share
  of one reference-model `train_step` (bf16 on CUDA, fp32 on CPU; channels-last);
- the loader start-up: seconds from starting a training epoch of `train_loader` (its workers
  are started per epoch) to its first batch, and an eval pass's start-up likewise, each as a
  share of the whole epoch / pass; and the same val loader iterated a second time, as
  training does every epoch (its workers persist: no second start-up);
- staging an epoch on the device (`staged_train_loader`: read, then copy) in seconds, against
  streaming the same epoch.
Synthetic shards in a temporary folder. Prints one JSON line (also written to --json-out).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from bench.emit import emit_result
from data_gen.synthetic import write_tiny_dataset
from seqtrain.components.loss_window import LossWindow
from seqtrain.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from seqtrain.data.format import load_manifest
from seqtrain.data.global_batch import batch_sizes
from seqtrain.data.position import Position, plan_epoch
from seqtrain.data.staged import staged_train_loader
from seqtrain.data.stream import (
    eval_loader,
    train_layout,
    train_loader,
    train_steps_per_epoch,
)
from seqtrain.distributed import make_accelerator
from seqtrain.step import build_model_and_optimizer, train_step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_call_seconds(
    call: Callable[[int], object], calls: int, device: torch.device, warmup: int = 1
) -> float:
    """Mean seconds of `call(i)` over `calls` calls, device work included, after `warmup` calls
    (CUDA loads each kernel on its first launch: every code path must run once before timing)."""
    for i in range(warmup):
        call(i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(calls):
        call(i)
    synchronize(device)
    return (time.perf_counter() - start) / calls


class NaiveLossSum:
    """The bookkeeping LossWindow replaced: a float64 stack-add and a finite check per step."""

    def __init__(self, device: torch.device) -> None:
        self.values = torch.zeros(2, dtype=torch.float64, device=device)
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)

    def add(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().to(torch.float64)
        self.values += torch.stack([loss, torch.ones_like(loss)])
        first_bad = (self.first_bad_step < 0) & ~torch.isfinite(loss)
        self.first_bad_step = torch.where(first_bad, step, self.first_bad_step)


def bookkeeping(args: argparse.Namespace, run_dir: Path) -> dict:
    cuda = torch.cuda.is_available() and not args.cpu
    cfg = RunConfig(
        model=ModelConfig(model="reference", channels_last=True),
        train=TrainConfig(mixed_precision="bf16" if cuda else "no", cpu=not cuda),
    )
    cfg.log.wandb_mode = "disabled"
    accelerator = make_accelerator(cfg, run_dir)
    device = accelerator.device
    model, optimizer = build_model_and_optimizer(cfg, accelerator)
    images = torch.randint(0, 256, (args.batch_size, 1, 28, 84), dtype=torch.uint8)
    labels = torch.randint(0, 11, (args.batch_size, 3))
    step_s = per_call_seconds(
        lambda _i: train_step(accelerator, model, optimizer, (images, labels), cfg),
        args.steps,
        device,
    )
    loss = torch.tensor(0.5, device=device)
    window, naive = LossWindow(device), NaiveLossSum(device)
    window_s = per_call_seconds(lambda i: window.add(loss, i + 1), args.steps * 20, device)
    naive_s = per_call_seconds(lambda i: naive.add(loss, i + 1), args.steps * 20, device)
    return {
        "device": str(device),
        "train_step_s": step_s,
        "loss_window_add_s": window_s,
        "naive_loss_sum_s": naive_s,
        # two windows (log window and epoch) are fed per step
        "loss_window_share_of_step": 2 * window_s / step_s,
        "naive_share_of_step": 2 * naive_s / step_s,
    }


def first_and_total(batches: Iterable) -> tuple[float, float]:
    """Seconds to the first batch and for all of them."""
    start = time.perf_counter()
    first = None
    for _ in batches:
        first = first or time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


def loader_startup(args: argparse.Namespace, root: Path, device: torch.device) -> dict:
    manifest = load_manifest(root)
    cfg = DataConfig(
        shards=root, batch_size=args.batch_size, eval_batch_size=1000, num_workers=args.workers
    )
    steps = train_steps_per_epoch(manifest, args.batch_size)
    plan, _ = plan_epoch(Position(), 0, train_layout(cfg, batch_sizes(cfg, 1)), 0, steps)
    train_first, train_total = first_and_total(train_loader(manifest, cfg, plan, 0, 1, device))
    evaluation = eval_loader(manifest, cfg, "val", 0, 1, device=device, persistent=True)
    eval_first, eval_total = first_and_total(evaluation)
    again_first, again_total = first_and_total(evaluation)
    start = time.perf_counter()
    staged = staged_train_loader(manifest, plan, 0, 1, device)  # the same order: the same plan
    synchronize(device)
    staged_load = time.perf_counter() - start
    _, staged_total = first_and_total(staged)
    return {
        "num_workers": args.workers,
        "train_epoch_samples": steps * args.batch_size,
        "train_startup_s": train_first,
        "train_epoch_s": train_total,
        "train_startup_share_of_epoch": train_first / train_total,
        "eval_samples": manifest.num_samples("val"),
        "eval_startup_s": eval_first,
        "eval_pass_s": eval_total,
        "eval_startup_share_of_pass": eval_first / eval_total,
        "eval_again_startup_s": again_first,
        "eval_again_pass_s": again_total,
        "staged_load_s": staged_load,
        "staged_serve_s": staged_total,
        "staged_load_share_of_streamed_epoch": staged_load / train_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000, help="training samples (1 epoch)")
    parser.add_argument("--workers", type=int, default=2, help="loader workers")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cpu", action="store_true", help="measure on CPU even with a GPU")
    parser.add_argument("--json-out", type=Path, help="also write the JSON line here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shards"
        sizes = [args.samples // 8] * 8
        write_tiny_dataset(root, {"train": sizes, "val": [2000] * 2, "test": [1]}, 256)
        record = {"bench": "step_overheads", **bookkeeping(args, Path(tmp) / "run")}
        record |= loader_startup(args, root, torch.device(record["device"]))
    emit_result({k: round(v, 6) if isinstance(v, float) else v for k, v in record.items()},
                args.json_out)  # fmt: skip


if __name__ == "__main__":
    main()
