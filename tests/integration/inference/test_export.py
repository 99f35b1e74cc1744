"""Export and `seqtrain.load_model`, on the session's tiny trained run (`inference_run`)."""

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

import seqtrain
from seqtrain.cli import main
from seqtrain.common.errors import UserError
from seqtrain.data.format import IMAGE_SHAPE
from seqtrain.export import CONFIG_NAME, WEIGHTS_NAME, export_model, load_model
from seqtrain.models import build_model
from support.inference import logits_of, shard_test_images


def checkpoint_model(run: Path) -> torch.nn.Module:
    """The best checkpoint's weights in a fresh model, read without seqtrain.export."""
    model = build_model("tiny")
    model.load_state_dict(load_file(run / "checkpoints" / "best" / WEIGHTS_NAME))
    return model.eval()


def test_export_loads_to_identical_outputs(
    inference_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    main(["export", "--checkpoint", str(inference_run), "--out", str(tmp_path / "export")])
    images = shard_test_images(tiny_shards)
    expected = logits_of(checkpoint_model(inference_run), images)
    for source in (tmp_path / "export", inference_run, inference_run / "checkpoints" / "best"):
        model = seqtrain.load_model(source)
        assert not model.training
        assert next(model.parameters()).device.type == "cpu"
        assert torch.equal(logits_of(model, images), expected), source
    files = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert files == [CONFIG_NAME, WEIGHTS_NAME], "only the two files, no temporaries"


def test_export_description(inference_run: Path, tmp_path: Path) -> None:
    export_model(inference_run, tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["model"] == "tiny"
    assert config["seqtrain_version"] == seqtrain.__version__
    assert config["input"]["shape"] == [1, *IMAGE_SHAPE]
    assert config["output"]["classes"] == [*"0123456789", "blank"]
    # Only the weights of the bare model: no optimizer state, no wrapper prefixes.
    assert set(load_file(tmp_path / WEIGHTS_NAME)) == set(build_model("tiny").state_dict())


def test_load_model_needs_no_training_stack(inference_run: Path, tmp_path: Path) -> None:
    export_model(inference_run, tmp_path)
    code = (
        "import sys, seqtrain; seqtrain.load_model(sys.argv[1]); "
        "print(sorted({'accelerate', 'webdataset', 'wandb', 'tyro'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_checkpoint_saved_under_ddp_loads(inference_run: Path, tmp_path: Path) -> None:
    # A multi-process run saves the DDP-wrapped state dict: keys start with `module.`.
    checkpoint = tmp_path / "ddp-best"
    shutil.copytree(inference_run / "checkpoints" / "best", checkpoint)
    state = load_file(checkpoint / WEIGHTS_NAME)
    save_file({f"module.{k}": v for k, v in state.items()}, checkpoint / WEIGHTS_NAME)
    images = np.zeros((2, *IMAGE_SHAPE), dtype=np.uint8)
    expected = logits_of(checkpoint_model(inference_run), images)
    assert torch.equal(logits_of(load_model(checkpoint), images), expected)


def test_bad_sources_are_one_line_errors(
    inference_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UserError, match="not a seqtrain run, checkpoint or export folder"):
        load_model(tmp_path)
    wrong = tmp_path / "wrong-model"
    shutil.copytree(inference_run / "checkpoints" / "best", wrong)
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
