"""Reading a W&B offline run back from its record log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seqtrain.tracking import _BLOCK, read_offline_run


def test_offline_run_reads_back_config_history_summary_media(tmp_path: Path) -> None:
    import wandb

    run = wandb.init(
        project="p", mode="offline", dir=str(tmp_path), config={"optim": {"lr": 0.5}, "n": 3}
    )
    # Long text values make records span several 32 KiB blocks of the log.
    for step in range(3):
        run.log({"val/loss": 1.0 / (step + 1), "note": "x" * (_BLOCK // 2)}, step=step)
    run.log({"picture": wandb.Image(np.zeros((8, 8, 3), np.uint8))}, step=3)
    run.summary["test/exact_match"] = 0.75
    run.finish()

    back = read_offline_run(tmp_path)
    assert back["config"] == {"optim": {"lr": 0.5}, "n": 3}
    assert [row["val/loss"] for row in back["history"] if "val/loss" in row] == pytest.approx(
        [1.0, 0.5, 1 / 3]
    )
    assert back["summary"]["test/exact_match"] == 0.75
    assert len(back["media"]) == 1 and back["media"][0].suffix == ".png"


def test_missing_run_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_offline_run(tmp_path)
