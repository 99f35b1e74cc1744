"""--capture: where the captured step holds, the line the log says once, and the one-line errors
of `--capture on` where it cannot hold (decided from the device type and process count)."""

from __future__ import annotations

import pytest
import torch

from seqtrain.common.errors import UserError
from seqtrain.components.capture import choose_capture
from seqtrain.config import ModelConfig, RunConfig, TrainConfig

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def config(capture: str, precision: str = "bf16") -> RunConfig:
    return RunConfig(
        model=ModelConfig(capture=capture), train=TrainConfig(mixed_precision=precision)
    )


def test_one_gpu_process_captures() -> None:
    for capture in ("auto", "on"):
        choice = choose_capture(config(capture), CUDA, 1)
        assert choice.mode == "graph"
        assert choice.line.startswith("training step: captured as a CUDA graph")


@pytest.mark.parametrize(
    ("device", "processes", "precision", "reason"),
    [
        (CPU, 1, "no", "CUDA graphs need a GPU"),
        (CUDA, 2, "bf16", "2 processes: DDP's gradient all-reduce is not captured"),
        (CUDA, 1, "fp16", "fp16's gradient scaler"),
    ],
)
def test_where_it_cannot_hold_auto_runs_eagerly_and_on_refuses(
    device: torch.device, processes: int, precision: str, reason: str
) -> None:
    choice = choose_capture(config("auto", precision), device, processes)
    assert choice.mode == "eager"
    assert choice.line.startswith("training step: eager (") and reason in choice.line
    with pytest.raises(UserError, match=r"^--capture on: .*\(use --capture auto or off\)$"):
        choose_capture(config("on", precision), device, processes)


def test_off_stays_eager_anywhere() -> None:
    choice = choose_capture(config("off"), CUDA, 1)
    assert (choice.mode, choice.line) == ("eager", "training step: eager (--capture off)")
