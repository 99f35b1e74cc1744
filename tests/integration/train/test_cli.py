"""`seqtrain train` on bad input: one line on stderr, exit 2, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.training import run_in_process, train_argv


def bad_version(shards: Path, tmp: Path) -> list[str]:
    copy = tmp / "shards"
    shutil.copytree(shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return ["--shards", str(copy)]


def corrupt_shard(shards: Path, tmp: Path) -> list[str]:
    copy = tmp / "shards"
    shutil.copytree(shards, copy)
    for shard in sorted((copy / "train").glob("*.tar")):
        shard.write_bytes(shard.read_bytes()[:700])  # cut inside the first member
    return ["--shards", str(copy)]


def other_models_checkpoint(shards: Path, tmp: Path) -> list[str]:
    run_in_process(train_argv(shards, tmp, "tiny", "--epochs", "1", "--steps-per-epoch", "1",
                              "--wandb-mode", "disabled"))  # fmt: skip
    return ["--model", "reference", "--resume", str(tmp / "tiny" / "checkpoints" / "last")]


CASES = {
    "missing shard folder": (lambda s, t: ["--shards", str(t / "nope")], "does not exist"),
    "manifest version": (bad_version, "format version 99"),
    "corrupt shard": (corrupt_shard, "train-e000-s00000.tar: sha256 differs"),
    "unknown model": (lambda s, t: ["--model", "nope"], "--model 'nope' is unknown"),
    "invalid value": (lambda s, t: ["--batch-size", "0"], "--batch-size must be > 0"),
    "cap, no cache": (lambda s, t: ["--cache-max-gb", "2"], "--cache-max-gb needs --cache-dir"),
    "unknown flag": (lambda s, t: ["--bogus", "1"], "bogus"),
    "missing resume": (lambda s, t: ["--resume", str(t / "nope")], "not a complete seqtrain"),
    "fp16 on cpu": (lambda s, t: ["--mixed-precision", "fp16", "--cpu"], "needs a GPU"),
    "other model's checkpoint": (other_models_checkpoint, "is of model 'tiny'"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2(
    case: str, tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_flags, expected = CASES[case]
    flags = make_flags(tiny_shards, tmp_path)
    capsys.readouterr()
    argv = train_argv(tiny_shards, tmp_path, "bad", "--wandb-mode", "disabled")
    with pytest.raises(SystemExit) as exit_info:
        run_in_process([*argv, *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    # A progress bar the error interrupted is cleared with carriage returns on the same line.
    line = err.rstrip().split("\r")[-1]
    assert line.startswith("seqtrain: error: ") and expected in line, line


def test_console_script_reports_without_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("seqtrain")
    done = subprocess.run(
        [str(script), "train", "--shards", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    from seqtrain.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--early-stop-patience" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2
    assert "unknown command 'fly'" in capsys.readouterr().err
