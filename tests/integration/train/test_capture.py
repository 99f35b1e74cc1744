"""--capture through the real CLI on the CPU: auto says once that the step runs eagerly and
reports no capture seconds; on is a one-line error before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.training import job_argv, read_jsonl, refusal, run_in_process


def test_auto_on_the_cpu_says_eager_once_and_captures_nothing(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_in_process(job_argv(tiny_shards, tmp_path, epochs=2))
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if ln.startswith("training step:")]
    assert lines == ["training step: eager (CUDA graphs need a GPU; this run trains on the CPU)"]
    epochs = read_jsonl(tmp_path / "job" / "metrics.jsonl")
    assert [e["capture_seconds"] for e in epochs] == [0.0, 0.0]


def test_on_where_it_cannot_hold_is_a_one_line_error(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refusal(job_argv(tiny_shards, tmp_path, "--capture", "on"), capsys)
    assert line == (
        "seqtrain: error: --capture on: CUDA graphs need a GPU; this run trains on the CPU "
        "(use --capture auto or off)"
    )
    assert not (tmp_path / "job").exists()
