"""Inference checks: test images straight from a shard set, a model's logits on them, PNG files of
them, and `seqtrain predict` / `evaluate` run in this process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seqtrain.cli import main
from seqtrain.data.format import iter_shard_chunks, load_manifest
from seqtrain.data.stream import images_to_float


def shard_test_images(shards: Path, count: int = 64) -> np.ndarray:
    """The first `count` test images of a shard set, uint8 [count, 28, 84]."""
    first = load_manifest(shards).shards("test")[0].path
    images = np.concatenate([chunk[1] for chunk in iter_shard_chunks(first)])
    return images[:count]


def logits_of(model: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(images_to_float(torch.from_numpy(images).unsqueeze(1)))


def write_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:03d}.png" for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image, mode="L").save(path)
    return paths


def run_predict(
    capsys: pytest.CaptureFixture[str], run: Path, *args: str
) -> tuple[list[str], list[str], int]:
    """stdout lines, stderr lines and exit code of `seqtrain predict` run in this process."""
    code = 0
    try:
        main(["predict", "--checkpoint", str(run), *args])
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err.splitlines(), code


def evaluate_argv(run: Path, shards: Path, out: Path, *extra: str) -> list[str]:
    """`seqtrain evaluate` of `run` writing `out`, in batches of 25 without loader workers."""
    # Batches of 25: each of two ranks gets 125 test samples, so both runs see the same
    # batches and the loss sums differ only in their summation order.
    return [
        "evaluate", "--checkpoint", str(run), "--shards", str(shards), "--json", str(out),
        "--batch-size", "25", "--num-workers", "0", *extra,
    ]  # fmt: skip
