"""Resuming under fp16 needs the gradient scaler's state, which only fp16 checkpoints hold: a
bf16/fp32 checkpoint gives one clear error instead of a traceback about a missing file."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.utils.constants import SCALER_NAME

from seqtrain.common.errors import UserError
from seqtrain.components.checkpoint import META_NAME, Position, load_checkpoint


def fake_checkpoint(folder: Path, with_scaler: bool) -> Path:
    """The files a bf16 run's checkpoint holds (a scaler file too when `with_scaler`)."""
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "optimizer.bin").write_bytes(b"")
    if with_scaler:
        (folder / SCALER_NAME).write_bytes(b"")
    meta = {"model": "tiny", "epoch": 2, "batches_done": 0, "step": 40}
    (folder / META_NAME).write_text(json.dumps(meta))
    return folder


def accelerator(fp16: bool, loaded: list[str]) -> SimpleNamespace:
    """Accelerate's view that matters here: a GradScaler exactly under fp16."""
    return SimpleNamespace(
        scaler=object() if fp16 else None,
        load_state=loaded.append,
        register_load_state_pre_hook=lambda hook: SimpleNamespace(remove=lambda: None),
        process_index=0,
    )


def test_fp16_resume_of_a_bf16_checkpoint_is_one_line_error(tmp_path: Path) -> None:
    folder = fake_checkpoint(tmp_path / "last", with_scaler=False)
    loaded: list[str] = []
    with pytest.raises(UserError, match="no fp16 gradient-scaler state") as error:
        load_checkpoint(accelerator(True, loaded), folder, "tiny")
    assert "\n" not in str(error.value)
    assert loaded == []


@pytest.mark.parametrize(("fp16", "with_scaler"), [(True, True), (False, False), (False, True)])
def test_matching_or_scaler_free_resumes_load(tmp_path: Path, fp16: bool, with_scaler: bool):
    folder = fake_checkpoint(tmp_path / "last", with_scaler)
    loaded: list[str] = []
    assert load_checkpoint(accelerator(fp16, loaded), folder, "tiny") == Position(epoch=2, step=40)
    assert loaded == [str(folder)]
