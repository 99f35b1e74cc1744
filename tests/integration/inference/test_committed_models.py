"""The models committed under experiments/models/ (issue 13's headline recipes) load as they are:
`seqtrain evaluate` scores them on data they never saw, and `seqtrain predict` reads PNGs with
them and agrees with the true digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seqtrain.data.format import iter_shard_chunks, load_manifest, sequence_text
from support import REPO
from support.inference import run_predict, shard_test_images, write_pngs
from support.training import run_in_process

MODELS = REPO / "experiments" / "models"
# experiments/models/<recipe>/ holds one model, or an ensemble's members in <recipe>/<member>/
COMMITTED = sorted(p.parent for p in MODELS.glob("**/model.json"))
ENSEMBLES = sorted({p.parent for p in COMMITTED if p.parent != MODELS})


def card_of(folder: Path) -> Path:
    return folder / "README.md" if folder.parent == MODELS else folder.parent / "README.md"


def test_there_are_committed_models() -> None:
    assert COMMITTED, "experiments/models/<recipe>/model.json"
    for folder in COMMITTED:
        assert (folder / "model.safetensors").stat().st_size < 5_000_000
        assert card_of(folder).is_file(), f"{folder.relative_to(MODELS)} has no card"


@pytest.mark.parametrize("ensemble", ENSEMBLES, ids=[p.name for p in ENSEMBLES])
def test_committed_ensemble_evaluates_as_one_model(
    ensemble: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    first, *rest = sorted(p for p in COMMITTED if p.parent == ensemble)
    out = tmp_path / "eval.json"
    run_in_process(["evaluate", "--checkpoint", str(first), "--ensemble", *map(str, rest),
                    "--tta-shift", "1", "--shards", str(tiny_shards), "--json", str(out),
                    "--num-workers", "0"])  # fmt: skip
    result = json.loads(out.read_text())
    assert (result["count"], result["tta_views"]) == (250, 5)
    assert len(result["ensemble"]) == len(rest) >= 1
    assert result["exact_match"] >= 0.97, result["exact_match"]


@pytest.mark.parametrize("folder", COMMITTED, ids=[str(p.relative_to(MODELS)) for p in COMMITTED])
def test_committed_model_evaluates_on_unseen_test_digits(
    folder: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """The tiny shards' test split (250 sequences of MNIST-test digits, seed 0 of the fixture)."""
    out = tmp_path / "eval.json"
    run_in_process(["evaluate", "--checkpoint", str(folder), "--shards", str(tiny_shards),
                    "--json", str(out), "--num-workers", "0"])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["count"] == 250
    assert result["exact_match"] >= 0.97, result["exact_match"]


@pytest.mark.parametrize("ensemble", ENSEMBLES, ids=[p.name for p in ENSEMBLES])
def test_committed_ensemble_predicts_png_files(
    ensemble: Path, tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, *rest = sorted(p for p in COMMITTED if p.parent == ensemble)
    paths, truth = png_files_of_test_split(tiny_shards, tmp_path)
    args = ["--ensemble", *map(str, rest), "--tta-shift", "1", *map(str, paths)]
    out, err, code = run_predict(capsys, first, *args)
    assert (code, err) == (0, [])
    predicted = [line.split("\t")[1] for line in out]
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) >= 38


def png_files_of_test_split(
    shards: Path, folder: Path, count: int = 40
) -> tuple[list[Path], list[str]]:
    """The first `count` test sequences of `shards` as PNG files, and their true digits."""
    images = shard_test_images(shards, count=count)
    first = load_manifest(shards).shards("test")[0].path
    labels = np.concatenate([chunk[2] for chunk in iter_shard_chunks(first)])[:count]
    return write_pngs(folder, images), [sequence_text(row) for row in labels]


@pytest.mark.parametrize("folder", COMMITTED, ids=[str(p.relative_to(MODELS)) for p in COMMITTED])
def test_committed_model_predicts_png_files(
    folder: Path, tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths, truth = png_files_of_test_split(tiny_shards, tmp_path)
    out, err, code = run_predict(capsys, folder, *map(str, paths))
    assert (code, err) == (0, [])
    predicted = [line.split("\t")[1] for line in out]
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) >= 38
