"""Pictures: a bare figure saved atomically as PNG (what every picture of a run is drawn on),
and the predictions picture (sample images, predicted sequence above the true one)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seqtrain.common.atomic import atomic_open
from seqtrain.data.format import sequence_text

RIGHT_COLOR = "green"
WRONG_COLOR = "red"


def bare_figure(width: float, height: float) -> Figure:
    """A Figure without pyplot: it holds no global state and needs no display backend, so it is
    safe in any process."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: Path, dpi: int = 90) -> Path:
    """Write `figure` to `path` atomically; returns `path`."""
    with atomic_open(path, "wb") as f:
        figure.savefig(f, format="png", dpi=dpi)
    return path


def predictions_figure(
    images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, columns: int = 5
) -> Figure:
    """One panel per sample (uint8 images [N, 28, 84], labels/predicted [N, 3]); the title
    reads `pred X / true Y`, green when the whole sequence is right, red otherwise."""
    rows = max(1, math.ceil(len(images) / columns))
    figure = bare_figure(3.2 * columns, 1.9 * rows)
    for i, axes in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
        axes.axis("off")
        if i >= len(images):
            continue
        right = bool(np.array_equal(labels[i], predicted[i]))
        axes.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        axes.set_title(
            f"pred {sequence_text(predicted[i]) or '-'}\ntrue {sequence_text(labels[i]) or '-'}",
            color=RIGHT_COLOR if right else WRONG_COLOR,
            fontsize=11,
        )
    return figure


def save_predictions(
    path: Path, images: np.ndarray, labels: np.ndarray, predicted: np.ndarray
) -> None:
    save_png(predictions_figure(images, labels, predicted), path, dpi=80)
