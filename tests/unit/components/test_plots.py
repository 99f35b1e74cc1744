"""The predictions picture: green titles for right sequences, red for wrong ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from PIL import Image

from seqtrain.components.plots import RIGHT_COLOR, WRONG_COLOR, predictions_figure, save_predictions

BLANK = 10


def samples() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.array([[4, 7, BLANK], [1, BLANK, BLANK], [3, 3, 3], [9, 0, BLANK]])
    predicted = labels.copy()
    predicted[1, 0] = 2  # wrong digit
    predicted[3, 2] = 5  # an extra digit where a blank belongs
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 84), dtype=np.uint8)
    return images, labels, predicted


def test_title_colors_and_texts_follow_correctness() -> None:
    figure = predictions_figure(*samples(), columns=2)
    titles = [axes.title for axes in figure.axes if axes.title.get_text()]
    assert [t.get_text() for t in titles] == [
        "pred 47\ntrue 47",
        "pred 2\ntrue 1",
        "pred 333\ntrue 333",
        "pred 905\ntrue 90",
    ]
    colors = [to_rgb(t.get_color()) for t in titles]
    right, wrong = to_rgb(RIGHT_COLOR), to_rgb(WRONG_COLOR)
    assert colors == [right, wrong, right, wrong]


def test_saved_png_has_green_and_red_text(tmp_path: Path) -> None:
    path = tmp_path / "predictions.png"
    save_predictions(path, *samples())
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((g > 100) & (r < 60) & (b < 60)).sum() > 20  # matplotlib "green" is (0, 128, 0)
    assert ((r > 200) & (g < 60) & (b < 60)).sum() > 20
