"""bench.whole_run: both whole processes run on the same samples and the figures come back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import whole_run


def test_one_round_times_both_processes(mnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "whole_run.json"
    whole_run.main(["--mnist-dir", str(mnist_dir), "--train-size", "256", "--eval-size", "100",
                    "--rounds", "1", "--json-out", str(out),
                    "--seqtrain-flags=--num-workers 0"])  # fmt: skip
    record = json.loads(out.read_text())
    assert record["train_size"] == 256 and record["seqtrain_flags"] == ["--num-workers", "0"]
    for side in ("seed", "seqtrain"):
        figures = record[side]
        assert figures["wall"] >= figures["epoch"] > 0 and figures["cpu"] > 0
        assert figures["rest"] == pytest.approx(figures["wall"] - figures["epoch"], abs=0.02)
    assert record["speedup_wall"]["median"] == pytest.approx(
        record["seed"]["wall"] / record["seqtrain"]["wall"], rel=0.01
    )


def test_a_missing_seed_script_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        whole_run.main(["--mnist-dir", str(tmp_path), "--baseline", str(tmp_path / "none.py")])
    assert stop.value.code == 2
    assert "no seed script at" in capsys.readouterr().err
