"""`seqtrain predict`: image files give what the model gives the same arrays directly; other
sizes, modes and dark-on-light images are brought to the training layout; bad files fail alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqtrain.data.format import IMAGE_SHAPE, sequence_text
from seqtrain.export import load_model
from seqtrain.models.averaged import AveragedPredictor, cross_shifts
from seqtrain.predict import to_model_layout
from support.inference import logits_of, run_predict, shard_test_images, write_pngs


@pytest.fixture(scope="module")
def images(tiny_shards: Path) -> np.ndarray:
    return shard_test_images(tiny_shards, count=20)


def direct_predictions(run: Path, images: np.ndarray) -> list[str]:
    labels = logits_of(load_model(run), images).argmax(dim=-1).numpy()
    return [sequence_text(row) for row in labels]


def test_png_files_predict_as_the_arrays_do(
    inference_run: Path, images: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_pngs(tmp_path, images)
    out, err, code = run_predict(capsys, inference_run, *map(str, paths))
    assert (code, err) == (0, [])
    expected = direct_predictions(inference_run, images)
    assert out == [f"{p}\t{digits}" for p, digits in zip(paths, expected, strict=True)]


def test_folder_glob_and_json(
    inference_run: Path, images: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_pngs(tmp_path / "scans", images[:5])
    (tmp_path / "scans" / "notes.txt").write_text("not an image, not listed")
    expected = direct_predictions(inference_run, images[:5])
    out, _, code = run_predict(capsys, inference_run, "--json", str(tmp_path / "scans"))
    records = [json.loads(line) for line in out]
    assert code == 0
    assert [r["path"] for r in records] == [str(p) for p in paths]
    assert [r["digits"] for r in records] == expected
    assert all(0 < r["confidence"] <= 1 for r in records)
    out, _, _ = run_predict(capsys, inference_run, str(tmp_path / "scans" / "00[13].png"))
    assert out == [f"{paths[i]}\t{expected[i]}" for i in (1, 3)]


def test_other_modes_and_sizes_reach_the_training_layout(images: np.ndarray) -> None:
    image = images[0]
    gray = Image.fromarray(image, mode="L")
    same = {
        "RGB": gray.convert("RGB"),
        "RGBA": gray.convert("RGBA"),
        "LA": gray.convert("LA"),
        "P": gray.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=256),
        "I;16": Image.fromarray(image.astype(np.uint16) * 257),
    }
    for mode, variant in same.items():
        assert np.abs(to_model_layout(variant).astype(int) - image).max() <= 1, mode
    # Twice the size: scaled back to height 28, close to the original.
    double = gray.resize((168, 56), Image.Resampling.NEAREST)
    assert np.abs(to_model_layout(double).astype(float) - image).mean() < 8
    # One 28x28 digit: placed in slot 0 (left), the other slots empty, as data_gen draws it.
    single = to_model_layout(gray.crop((0, 0, 28, 28)))
    assert single.shape == IMAGE_SHAPE
    assert np.array_equal(single[:, :28], image[:, :28]) and not single[:, 28:].any()


def test_dark_on_light_scan_predicts_as_the_original(
    inference_run: Path, images: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    originals = write_pngs(tmp_path / "light", images[:6])
    inverted = write_pngs(tmp_path / "dark", 255 - images[:6])
    out, _, _ = run_predict(capsys, inference_run, *map(str, originals))
    out_inverted, _, _ = run_predict(capsys, inference_run, *map(str, inverted))
    digits = [line.split("\t")[1] for line in out]
    assert [line.split("\t")[1] for line in out_inverted] == digits
    out_yes, _, _ = run_predict(capsys, inference_run, "--invert", "yes", *map(str, inverted))
    assert [line.split("\t")[1] for line in out_yes] == digits
    assert np.array_equal(to_model_layout(Image.open(inverted[0]), invert="no"), 255 - images[0])


def test_bad_files_fail_alone(
    inference_run: Path, images: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_pngs(tmp_path, images[:2])
    wide = tmp_path / "wide.png"
    Image.fromarray(np.zeros((28, 120), dtype=np.uint8)).save(wide)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    missing = tmp_path / "missing.png"
    args = [str(good[0]), str(wide), str(broken), str(missing), str(good[1])]
    out, err, code = run_predict(capsys, inference_run, *args)
    assert code == 1
    assert [line.split("\t")[0] for line in out] == [str(good[0]), str(good[1])]
    assert len(err) == 3
    assert f"{wide}: 120x28 image is 120 px wide" in err[0] and "three digits" in err[0]
    assert str(broken) in err[1] and str(missing) in err[2] and "no such file" in err[2]


def test_ensemble_with_views_predicts_as_the_averaged_model(
    inference_run: Path, images: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_pngs(tmp_path, images[:8])
    args = ["--ensemble", str(inference_run), "--tta-shift", "1", "--json", *map(str, paths)]
    out, err, code = run_predict(capsys, inference_run, *args)
    assert (code, err) == (0, [])
    model = load_model(inference_run)
    averaged = AveragedPredictor([model, model], cross_shifts(1))
    top, labels = logits_of(averaged, images[:8]).exp().max(-1)
    records = [json.loads(line) for line in out]
    assert [r["digits"] for r in records] == [sequence_text(row) for row in labels.numpy()]
    assert [r["confidence"] for r in records] == pytest.approx(top.prod(-1).tolist(), rel=1e-5)
    plain, _, _ = run_predict(capsys, inference_run, "--json", *map(str, paths))
    assert [json.loads(line)["confidence"] for line in plain] != [r["confidence"] for r in records]


def test_negative_shift_is_a_one_line_error(
    inference_run: Path, images: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_pngs(tmp_path, images[:1])
    out, err, code = run_predict(capsys, inference_run, "--tta-shift", "-1", str(paths[0]))
    assert (out, code) == ([], 2)
    assert len(err) == 1 and "--tta-shift must be >= 0" in err[0], err
