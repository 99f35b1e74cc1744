"""Fault injection, data_gen: SIGKILL at seeded random moments, then a rerun to completion."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqtrain.data.format import MANIFEST_NAME
from support import REPO
from support.generate import run_data_gen, shard_bytes_of, tiny_generate_argv

pytestmark = pytest.mark.faults

SIZE = ["--train-size", "3000", "--epochs", "4", "--shard-size", "50"]  # 250 shards
TOTAL_SHARDS = 250
KILL_SEED = 7


def records_done(out: Path) -> int:
    return len(list(out.glob("records/*/*.json")))


def kill_when(argv: list[str], out: Path, records: int) -> None:
    """Start a generate run and SIGKILL its whole process group (workers too) once at least
    `records` shards are complete in `out`."""
    proc = subprocess.Popen([sys.executable, "-m", "data_gen", *argv], cwd=REPO,
                            start_new_session=True, stdout=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while records_done(out) < records and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def assert_nothing_torn(out: Path, reference: Path) -> None:
    """Every file under a final name is complete: shards equal the reference, records parse,
    and the manifest is absent or complete."""
    for shard in out.glob("*/*.tar"):
        assert shard.read_bytes() == (reference / shard.relative_to(out)).read_bytes(), shard
    for record in out.glob("records/*/*.json"):
        json.loads(record.read_text())
    manifest = out / MANIFEST_NAME
    if manifest.exists():
        assert manifest.read_bytes() == (reference / MANIFEST_NAME).read_bytes()


@pytest.mark.slow
def test_killed_at_seeded_moments_then_rerun_is_byte_identical(mnist_dir, tmp_path, capsys):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert run_data_gen([*tiny_generate_argv(mnist_dir, reference), *SIZE], capsys)[0] == 0
    argv = [*tiny_generate_argv(mnist_dir, killed, workers=2), *SIZE]

    moments = sorted(random.Random(KILL_SEED).sample(range(1, TOTAL_SHARDS), 3))
    done = []
    for moment in moments:
        kill_when(argv, killed, moment)
        assert_nothing_torn(killed, reference)
        done.append(records_done(killed))
    assert done == sorted(done) and done[-1] < TOTAL_SHARDS, (moments, done)

    code, text, _ = run_data_gen(argv, capsys)
    assert code == 0 and f"({TOTAL_SHARDS - done[-1]} written, {done[-1]} already" in text
    assert shard_bytes_of(killed) == shard_bytes_of(reference)
    assert (killed / MANIFEST_NAME).read_bytes() == (reference / MANIFEST_NAME).read_bytes()
    assert not list(killed.rglob("*.tmp"))
