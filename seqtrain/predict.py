"""`seqtrain predict`: read the digit sequence in image files with a trained model.

Any image is brought to the training layout (28x84 uint8, white digits on black): converted
to grayscale, inverted if it is dark on light, scaled to height 28 keeping its aspect ratio,
and placed at the left of the 84 px canvas, because data_gen fills the slots from the left
(a one-digit image is slot 0 followed by two empty slots). Images already 28 px high are not
resampled, so data_gen-style images go to the model untouched.

Output: one line per image, `path<TAB>digits`; with `--json`, one JSON object per line
(`path`, `digits`, `confidence`: the product of the slots' top probabilities). A file that
cannot be read is a one-line error on stderr; the others are still predicted and the command
exits with status 1 at the end.
"""

from __future__ import annotations

import glob
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro
from PIL import Image, UnidentifiedImageError
from torch import nn

from seqtrain.common.errors import UserError
from seqtrain.data.format import DIGIT_SIZE, IMAGE_SHAPE, sequence_text
from seqtrain.data.stream import images_to_float
from seqtrain.export import ModelChoice, load_predictor

Invert = Literal["auto", "yes", "no"]
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".pnm", ".ppm"}
)
EXIT_SOME_FAILED = 1


@dataclass
class PredictConfig(ModelChoice):
    """Print the digit sequence read in each image: `path<TAB>digits` per line."""

    images: Annotated[tyro.conf.Positional[tuple[str, ...]], tyro.conf.arg(metavar="IMAGE...")]
    """Image files, folders (their images, sorted) or quoted glob patterns."""
    invert: Invert = "auto"
    """Invert dark-on-light images: `auto` does when the image border is bright."""
    json: bool = False
    """Print one JSON object per line: {"path", "digits", "confidence"}."""
    batch_size: int = 256
    """Images per forward pass."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.images:
            raise UserError("no IMAGE given (files, folders or quoted glob patterns)")
        if self.batch_size <= 0:
            raise UserError("--batch-size must be > 0")


@dataclass(frozen=True)
class Prediction:
    path: str
    digits: str
    confidence: float


def to_model_layout(image: Image.Image, invert: Invert = "auto") -> np.ndarray:
    """Any PIL image → uint8 [28, 84], white digits on black, left-aligned.

    Raises ValueError when the image, scaled to height 28, is wider than three digits.
    """
    gray = _grayscale(image)
    if invert == "yes" or (invert == "auto" and _border_is_bright(gray)):
        gray = 255.0 - gray
    height, width = gray.shape
    scaled_width = max(1, round(width * DIGIT_SIZE / height))
    if scaled_width > IMAGE_SHAPE[1]:
        raise ValueError(
            f"{width}x{height} image is {scaled_width} px wide at height {DIGIT_SIZE}, more "
            f"than the {IMAGE_SHAPE[1]} px of three digits"
        )
    if height != DIGIT_SIZE:
        resized = Image.fromarray(gray.astype(np.float32), mode="F").resize(
            (scaled_width, DIGIT_SIZE), Image.Resampling.LANCZOS
        )
        gray = np.asarray(resized)
    canvas = np.zeros(IMAGE_SHAPE, dtype=np.uint8)
    canvas[:, : gray.shape[1]] = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return canvas


def _grayscale(image: Image.Image) -> np.ndarray:
    """Float [H, W] in [0, 255]; 16-bit and float modes are rescaled, not clipped as
    Pillow's `convert("L")` would."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        top = 255.0 if values.max(initial=0) <= 255 else 65535.0
        return (values * (255.0 / top)).clip(0, 255)
    return np.asarray(image.convert("L"), dtype=np.float64)


def _border_is_bright(gray: np.ndarray) -> bool:
    """Digits sit inside the image, so its outermost pixels show the background."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(border.mean()) > 127.5


def read_image(path: str, invert: Invert = "auto") -> np.ndarray:
    """One image file in the model layout; any problem is a ValueError with a short reason."""
    try:
        # Pillow warns (e.g. "Corrupt EXIF data") on damaged files it can still decode: the
        # prediction or the one-line reason is the whole answer, so keep stderr to that.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                image.load()
                return to_model_layout(image, invert)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("is a folder without images") from None
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read") from None
    except OSError as e:
        raise ValueError(f"unreadable image ({e})") from None


@torch.no_grad()
def predict_arrays(model: nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels [N, 3] and confidences [N] for uint8 images [N, 28, 84] (model on CPU)."""
    x = images_to_float(torch.from_numpy(images).unsqueeze(1))
    probabilities = model(x).float().softmax(dim=-1)
    top, labels = probabilities.max(dim=-1)
    return labels.numpy(), top.prod(dim=-1).numpy()


def expand_inputs(inputs: Sequence[str]) -> Iterator[str]:
    """Files as given; folders as their image files, sorted; unmatched paths with glob
    characters as their sorted matches. Nonexistent paths pass through (and fail to read)."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            yield from (str(p) for p in found) if found else [item]
        elif not path.exists() and glob.has_magic(item):
            yield from sorted(glob.glob(item)) or [item]
        else:
            yield item


def predict_files(
    model: nn.Module, paths: Sequence[str], invert: Invert, batch_size: int
) -> Iterator[Prediction | tuple[str, str]]:
    """A `Prediction`, or `(path, reason)` for an unreadable file, per path, in order."""
    for start in range(0, len(paths), batch_size):
        readable, arrays, failures = [], [], {}
        for path in paths[start : start + batch_size]:
            try:
                arrays.append(read_image(path, invert))
                readable.append(path)
            except ValueError as e:
                failures[path] = str(e)
        results = {}
        if arrays:
            labels, confidence = predict_arrays(model, np.stack(arrays))
            for path, row, p in zip(readable, labels, confidence, strict=True):
                results[path] = Prediction(path, sequence_text(row), float(p))
        for path in paths[start : start + batch_size]:
            yield results[path] if path in results else (path, failures[path])


def command(argv: list[str]) -> None:
    """`seqtrain predict --checkpoint RUN IMAGE...`."""
    from seqtrain.common.cliparse import parse_config

    cfg = parse_config(PredictConfig, argv, "seqtrain predict", PredictConfig.__doc__ or "")
    model = load_predictor(cfg)
    failed = 0
    for result in predict_files(model, list(expand_inputs(cfg.images)), cfg.invert, cfg.batch_size):
        if isinstance(result, Prediction):
            line = json.dumps(asdict(result)) if cfg.json else f"{result.path}\t{result.digits}"
            print(line, flush=True)
        else:
            failed += 1
            print(f"seqtrain predict: error: {result[0]}: {result[1]}", file=sys.stderr)
    if failed:
        raise SystemExit(EXIT_SOME_FAILED)
