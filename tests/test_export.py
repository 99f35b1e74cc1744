"""Export and `seqtrain.load_model`; also home of the trained-run fixture the evaluate, predict
and report tests share (one tiny training run per test session)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train import run_in_process, train_argv

import seqtrain
from seqtrain.cli import main
from seqtrain.common.errors import UserError
from seqtrain.data.format import IMAGE_SHAPE, iter_shard_chunks, load_manifest
from seqtrain.data.stream import images_to_float
from seqtrain.export import CONFIG_NAME, WEIGHTS_NAME, export_model, load_model
from seqtrain.models import build_model

RUN_NAME = "tiny-for-inference"


def trained_run_dir(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-epoch tiny run, trained once per session whichever test module asks first
    (module fixtures importing one session fixture would each train again)."""
    out = tmp_path_factory.getbasetemp() / "inference-runs"
    run = out / RUN_NAME
    if not (run / "test_metrics.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        argv = train_argv(shards, out, RUN_NAME, "--epochs", "3", "--wandb-mode", "disabled")
        run_in_process(argv)
    return run


def shard_test_images(shards: Path, count: int = 64) -> np.ndarray:
    """The first `count` test images of a shard set, uint8 [count, 28, 84]."""
    first = load_manifest(shards).shards("test")[0].path
    images = np.concatenate([chunk[1] for chunk in iter_shard_chunks(first)])
    return images[:count]


def logits_of(model: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(images_to_float(torch.from_numpy(images).unsqueeze(1)))


@pytest.fixture(scope="module")
def trained_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run_dir(tiny_shards, tmp_path_factory)


def checkpoint_model(run: Path) -> torch.nn.Module:
    """The best checkpoint's weights in a fresh model, read without seqtrain.export."""
    model = build_model("tiny")
    model.load_state_dict(load_file(run / "checkpoints" / "best" / WEIGHTS_NAME))
    return model.eval()


def test_export_loads_to_identical_outputs(
    trained_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    main(["export", "--checkpoint", str(trained_run), "--out", str(tmp_path / "export")])
    images = shard_test_images(tiny_shards)
    expected = logits_of(checkpoint_model(trained_run), images)
    for source in (tmp_path / "export", trained_run, trained_run / "checkpoints" / "best"):
        model = seqtrain.load_model(source)
        assert not model.training
        assert next(model.parameters()).device.type == "cpu"
        assert torch.equal(logits_of(model, images), expected), source
    files = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert files == [CONFIG_NAME, WEIGHTS_NAME], "only the two files, no temporaries"


def test_export_description(trained_run: Path, tmp_path: Path) -> None:
    export_model(trained_run, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["model"] == "tiny"
    assert config["seqtrain_version"] == seqtrain.__version__
    assert config["input"]["shape"] == [1, *IMAGE_SHAPE]
    assert config["output"]["classes"] == [*"0123456789", "blank"]
    # Only the weights of the bare model: no optimizer state, no wrapper prefixes.
    assert set(load_file(tmp_path / WEIGHTS_NAME)) == set(build_model("tiny").state_dict())


def test_load_model_needs_no_training_stack(trained_run: Path, tmp_path: Path) -> None:
    export_model(trained_run, tmp_path)
    code = (
        "import sys, seqtrain; seqtrain.load_model(sys.argv[1]); "
        "print(sorted({'accelerate', 'webdataset', 'wandb', 'tyro'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_checkpoint_saved_under_ddp_loads(trained_run: Path, tmp_path: Path) -> None:
    # A multi-process run saves the DDP-wrapped state dict: keys start with `module.`.
    checkpoint = tmp_path / "ddp-best"
    shutil.copytree(trained_run / "checkpoints" / "best", checkpoint)
    state = load_file(checkpoint / WEIGHTS_NAME)
    save_file({f"module.{k}": v for k, v in state.items()}, checkpoint / WEIGHTS_NAME)
    images = np.zeros((2, *IMAGE_SHAPE), dtype=np.uint8)
    expected = logits_of(checkpoint_model(trained_run), images)
    assert torch.equal(logits_of(load_model(checkpoint), images), expected)


def test_bad_sources_are_one_line_errors(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UserError, match="not a seqtrain run, checkpoint or export folder"):
        load_model(tmp_path)
    wrong = tmp_path / "wrong-model"
    shutil.copytree(trained_run / "checkpoints" / "best", wrong)
    meta = json.loads((wrong / "seqtrain_checkpoint.json").read_text())
    (wrong / "seqtrain_checkpoint.json").write_text(json.dumps({**meta, "model": "reference"}))
    with pytest.raises(UserError, match="does not hold 'reference' weights"):
        load_model(wrong)
    (wrong / WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint", str(wrong), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable safetensors file" in err
    assert not (tmp_path / "out").exists()
