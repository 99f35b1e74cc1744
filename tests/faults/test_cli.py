"""Fault injection, command lines: bad input to every command of both console scripts is one
error line on stderr, a non-zero exit and no traceback."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.distributed import cpu_env

pytestmark = [pytest.mark.faults, pytest.mark.slow]

BIN = Path(sys.executable).parent

# name: (script, command line); {shards} is the tiny shard set, {tmp} a scratch folder, {bad} a
# file that is not an image, {nope} a path that does not exist.
CASES: dict[str, tuple[str, str]] = {
    "generate: wrong type": ("seqtrain-data", "generate --train-size many"),
    "generate: negative size": ("seqtrain-data", "generate --shard-size -3"),
    "generate: missing mnist": ("seqtrain-data", "generate --mnist-dir {nope} --out {tmp}/out"),
    "generate: conflicting nodes": ("seqtrain-data", "generate --num-nodes 2 --node-rank 5"),
    "finalize: missing folder": ("seqtrain-data", "finalize {nope}"),
    "finalize: no argument": ("seqtrain-data", "finalize"),
    "verify: missing folder": ("seqtrain-data", "verify {nope}"),
    "preview: unknown split": ("seqtrain-data", "preview {shards} --split dev"),
    "preview: negative count": ("seqtrain-data", "preview {shards} -n -1"),
    "unknown command": ("seqtrain-data", "fly"),
    "train: wrong type": ("seqtrain", "train --epochs two"),
    "train: negative batch": ("seqtrain", "train --batch-size -1"),
    "train: missing shards": ("seqtrain", "train --shards {nope}"),
    "train: unknown model": ("seqtrain", "train --shards {shards} --model nope"),
    "train: missing config": ("seqtrain", "train --config {nope}"),
    "evaluate: missing checkpoint": ("seqtrain", "evaluate --checkpoint {nope} --shards {shards}"),
    "evaluate: unknown split": ("seqtrain", "evaluate --checkpoint {nope} --split x"),
    "predict: missing checkpoint": ("seqtrain", "predict --checkpoint {nope} {bad}"),
    "predict: no images": ("seqtrain", "predict --checkpoint {nope}"),
    "predict: bad invert": ("seqtrain", "predict --checkpoint {nope} --invert x a.png"),
    "report: missing run": ("seqtrain", "report {nope}"),
    "report: not a run": ("seqtrain", "report {shards}"),
    "export: missing checkpoint": ("seqtrain", "export --checkpoint {nope} --out {tmp}/e"),
    "export: not a checkpoint": ("seqtrain", "export --checkpoint {shards} --out {tmp}/e"),
}


@pytest.fixture(scope="module")
def outcomes(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every case run as a real console-script subprocess, a few at a time."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "bad.png").write_bytes(b"not an image")
    values = {"shards": tiny_shards, "tmp": tmp, "bad": tmp / "bad.png", "nope": tmp / "nope"}

    def run(case: str) -> subprocess.CompletedProcess:
        script, line = CASES[case]
        argv = line.format(**values).split()
        return subprocess.run([str(BIN / script), *argv], env=cpu_env(), capture_output=True,
                              text=True, timeout=180, check=False)  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(CASES, pool.map(run, CASES), strict=True))


@pytest.mark.parametrize("case", CASES)
def test_bad_command_line_is_one_line(case: str, outcomes: dict) -> None:
    done = outcomes[case]
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1, done.stderr[-3000:]
    assert ": error: " in done.stderr, done.stderr
