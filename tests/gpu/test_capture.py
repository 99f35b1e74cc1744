"""The captured step on a GPU (skipped without one): the CUDA graph trains as the eager step
does, no step of an epoch waits for the host (`torch.cuda.set_sync_debug_mode("error")`), and a
`--capture on` run records once and reports its seconds apart from the epochs'."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from seqtrain.components.capture import WARMUP_STEPS
from seqtrain.components.lagged_log import LaggedLog
from seqtrain.components.preemption import PreemptionWatch
from seqtrain.config import PreemptConfig
from support.steps import accelerate_reset, batches, built_step
from support.training import read_jsonl, run_in_process, train_argv


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    yield
    accelerate_reset()  # a later in-process run builds its own Accelerator


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
STEPS = 50
OPTIONS = {"ema_decay": 0.9, "clip_grad_norm": 1.0, "lr": 3e-3}
MODELS = ["reference", "slotnet_narrow_skipblank"]


def trained(built, data) -> tuple[float, dict[str, torch.Tensor]]:
    """The epoch's loss sum (read once, at the end) and the weights after `data`."""
    built.step.start_epoch()
    for index, batch in enumerate(data, start=1):
        built.step(batch, index)
        built.schedule.after_step()
    loss_sum = built.step.epoch_loss.loss_sum.item()
    return loss_sum, {k: v.float().cpu() for k, v in built.step.model.state_dict().items()}


@pytest.mark.parametrize("sched", ["onecycle", "plateau"])
@pytest.mark.parametrize("model", MODELS)
def test_the_graph_trains_as_the_eager_step(tmp_path: Path, model: str, sched: str) -> None:
    data = batches(STEPS)
    runs = {}
    for mode in ("eager", "graph"):
        built = built_step(tmp_path, model, STEPS, mode, cpu=False, sched=sched, **OPTIONS)
        runs[mode] = trained(built, data)
        assert (built.step.capture_seconds > 0) == (mode == "graph")
    (eager_loss, eager_weights), (graph_loss, graph_weights) = runs["eager"], runs["graph"]
    assert graph_loss == pytest.approx(eager_loss, rel=1e-3)
    # cuDNN's kernels need not be bitwise deterministic, and Adam turns gradients near 0 into
    # whole steps of either sign: compare each tensor by its norm, as the layout tests do.
    for key, value in eager_weights.items():
        assert torch.dist(graph_weights[key], value) <= 1e-2 * value.norm() + 1e-6, key


@contextmanager
def no_syncs() -> Iterator[None]:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("mode", ["graph", "eager"])
@pytest.mark.parametrize("model", MODELS)
def test_an_epoch_of_steps_never_waits_for_the_host(tmp_path: Path, model: str, mode: str) -> None:
    """After the warm-up and the recording (which synchronise once, by design), every step of
    the epoch, its schedule update, the preemption check and the log steps' hand-over of their
    window run under sync debug mode "error" (any synchronising call raises); the last log
    window and the epoch's loss are read once, after."""
    built = built_step(
        tmp_path, model, STEPS, mode, cpu=False, precision="bf16", sched="onecycle", **OPTIONS
    )
    watch = PreemptionWatch(PreemptConfig(preempt_check_every=5), torch.device("cuda"))
    data = [tuple(t.pin_memory() for t in batch) for batch in batches(STEPS)]
    first = WARMUP_STEPS + 1
    for index, batch in enumerate(data[:first], start=1):
        built.step(batch, index)
        built.schedule.after_step()
    log = LaggedLog(built.step.accelerator)
    with no_syncs():
        for index, batch in enumerate(data[first:], start=first + 1):
            built.step(batch, index)
            built.schedule.after_step()
            watch.poll(index)
            if index % 10 == 0:
                log.submit(built.step.window, built.step.clip, index, host={})
    assert log.complete().step == STEPS
    epoch_loss = built.step.epoch_loss
    assert epoch_loss.batches == STEPS and torch.isfinite(epoch_loss.loss_sum).item()


def test_a_captured_run_reports_its_recording_apart(tiny_shards: Path, tmp_path: Path) -> None:
    flags = ["--epochs", "2", "--steps-per-epoch", "8", "--capture", "on", "--stage-on-device"]
    argv = train_argv(tiny_shards, tmp_path, "cap", *flags, "--wandb-mode", "disabled")
    run_in_process(argv)
    epochs = read_jsonl(tmp_path / "cap" / "metrics.jsonl")
    assert epochs[0]["capture_seconds"] > 0 and epochs[1]["capture_seconds"] == 0
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in epochs)
