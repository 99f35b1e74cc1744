"""--global-batch-size through the real command line: stated once in the log, saved in
config.yaml, part of the resume identity; sizes that do not divide stop with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from support.training import job_argv, refusal, run_in_process


def test_the_global_batch_is_logged_saved_and_guarded_at_resume(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_in_process(job_argv(tiny_shards, tmp_path, "--global-batch-size", "32",
                            "--micro-batch-size", "16"))  # fmt: skip
    out = capsys.readouterr().out
    line = "global batch 32 = 1 process(es) x 32, in 2 micro-batches of 16"
    assert out.count(line) == 1, out
    data = yaml.safe_load((tmp_path / "job" / "config.yaml").read_text())["data"]
    assert (data["global_batch_size"], data["micro_batch_size"], data["batch_size"]) == (32, 16, 32)

    # Accumulation is no change of the training: resumed with other micro-batches, unasked.
    run_in_process(job_argv(tiny_shards, tmp_path, "--global-batch-size", "32", "--resume",
                            "auto", "--micro-batch-size", "8"))  # fmt: skip
    resumed = ["--global-batch-size", "16", "--resume", "auto"]
    line = refusal(job_argv(tiny_shards, tmp_path, *resumed), capsys)
    assert "refused" in line and "--global-batch-size 32 -> 16" in line, line
    assert "--batch-size" not in line.replace("--global-batch-size", ""), line
    run_in_process(job_argv(tiny_shards, tmp_path, *resumed, "--accept-changes"))
    assert "the global batch changes from 32 to 16" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--global-batch-size", "32", "--micro-batch-size", "12"],
         "--micro-batch-size 12 does not divide the per-process batch 32"),
        (["--global-batch-size", "48", "--canonical-streams", "32"],
         "--canonical-streams 32 does not divide the global batch 48"),
        (["--model", "slotnet", "--sync-batchnorm", "on"], "--sync-batchnorm on needs GPU"),
    ],
)  # fmt: skip
def test_sizes_that_do_not_fit_stop_with_one_line(
    tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags, message
) -> None:
    line = refusal(job_argv(tiny_shards, tmp_path, *flags), capsys)
    assert line.startswith("seqtrain: error:") and message in line, line
    assert not (tmp_path / "job").exists()  # stopped before the run folder was claimed
