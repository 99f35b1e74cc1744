"""determinism across workers and nodes, resume (also after SIGKILL), verify, preview."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from seqtrain.data.format import MANIFEST_NAME, iter_shard_chunks
from support import REPO
from support.generate import run_data_gen, shard_bytes_of, tiny_generate_argv


def test_two_workers_write_the_same_bytes(tiny_shards, mnist_dir, tmp_path, capsys):
    assert run_data_gen(tiny_generate_argv(mnist_dir, tmp_path, workers=2), capsys)[0] == 0
    assert shard_bytes_of(tmp_path) == shard_bytes_of(tiny_shards)
    assert (tmp_path / MANIFEST_NAME).read_bytes() == (tiny_shards / MANIFEST_NAME).read_bytes()


def test_workers_end_with_their_pool_under_an_inherited_sigterm_handler(mnist_dir, tmp_path):
    """Generating from a process that handles SIGTERM with a flag (a trainer's preemption watch
    does, while it trains): the pool's workers must still end when the pool terminates them."""
    code = (
        "import signal, sys\n"
        "from data_gen.cli import main\n"
        "signal.signal(signal.SIGTERM, lambda *_: None)\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = [sys.executable, "-c", code, *tiny_generate_argv(mnist_dir, tmp_path, workers=2)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_nodes_write_disjoint_parts_then_finalize(tiny_shards, mnist_dir, tmp_path, capsys):
    def node(rank: int) -> list[str]:
        return [*tiny_generate_argv(mnist_dir, tmp_path, workers=2), "--num-nodes", "3",
                "--node-rank", str(rank)]  # fmt: skip

    parts = []
    for rank in (2, 0):
        before = set(shard_bytes_of(tmp_path))
        assert run_data_gen(node(rank), capsys)[0] == 0
        parts.append(set(shard_bytes_of(tmp_path)) - before)
    assert not parts[0] & parts[1] and not (tmp_path / MANIFEST_NAME).exists()
    code, _, err = run_data_gen(["finalize", str(tmp_path)], capsys)
    assert code == 2 and "--node-rank 1 of --num-nodes 3" in err and err.count("\n") == 1
    assert run_data_gen(node(1), capsys)[0] == 0
    assert run_data_gen(["finalize", str(tmp_path)], capsys)[0] == 0
    assert shard_bytes_of(tmp_path) == shard_bytes_of(tiny_shards)
    assert (tmp_path / MANIFEST_NAME).read_bytes() == (tiny_shards / MANIFEST_NAME).read_bytes()


def test_rerun_regenerates_only_missing_or_corrupt(tiny_shards, mnist_dir, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(tiny_shards, out)
    (out / "train/train-e001-s00002.tar").unlink()
    with open(out / "val/val-e000-s00002.tar", "r+b") as f:
        f.seek(3000)
        f.write(b"\xff")
    (out / "records/test/test-e000-s00000.tar.json").unlink()
    code, text, _ = run_data_gen(tiny_generate_argv(mnist_dir, out), capsys)
    assert code == 0 and "(3 written, 15 already complete)" in text
    assert shard_bytes_of(out) == shard_bytes_of(tiny_shards)


@pytest.mark.slow
def test_resume_after_sigkill(mnist_dir, tmp_path, capsys):
    """Kill a 2-worker run mid-way (whole process group), rerun: only the rest is written."""
    size = ["--train-size", "3000", "--epochs", "4", "--shard-size", "50"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert run_data_gen([*tiny_generate_argv(mnist_dir, reference), *size], capsys)[0] == 0
    argv = [*tiny_generate_argv(mnist_dir, killed, workers=2), *size]
    proc = subprocess.Popen([sys.executable, "-m", "data_gen", *argv], cwd=REPO,
                            start_new_session=True, stdout=subprocess.DEVNULL)  # fmt: skip
    records = killed / "records" / "train"
    deadline = time.monotonic() + 60
    while len(list(records.glob("*.json"))) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(killed.glob("records/*/*.json")))
    total = len(shard_bytes_of(reference))
    assert 20 <= done < total, "the run was not interrupted mid-way"
    for shard in killed.glob("*/*.tar"):  # every file under a final name is complete
        assert shard.read_bytes() == (reference / shard.relative_to(killed)).read_bytes()
    code, text, _ = run_data_gen(argv, capsys)
    assert code == 0 and f"({total - done} written, {done} already complete)" in text
    assert shard_bytes_of(killed) == shard_bytes_of(reference)
    assert not list(killed.rglob("*.tmp"))


def test_verify_passes_then_names_a_flipped_byte(tiny_shards, tmp_path, capsys):
    code, text, _ = run_data_gen(["verify", str(tiny_shards)], capsys)
    assert code == 0 and "train: 12/12 shards ok" in text
    out = tmp_path / "out"
    shutil.copytree(tiny_shards, out)
    bad = out / "test/test-e000-s00001.tar"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    (out / "val/val-e000-s00000.tar").unlink()
    code, text, err = run_data_gen(["verify", str(out)], capsys)
    assert code == 1
    assert f"BAD {bad}: sha256" in err and "val-e000-s00000.tar: missing" in err
    assert "test: 2/3 shards ok" in text


def test_verify_without_manifest_is_one_line(tmp_path, capsys):
    code, _, err = run_data_gen(["verify", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "manifest.json" in err


def test_preview_draws_a_png(tiny_shards, tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert run_data_gen(["preview", str(tiny_shards), "--split", "val", "-n", "6", "-o", str(png)],
                   capsys)[0] == 0  # fmt: skip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(len(c[2]) for c in iter_shard_chunks(tiny_shards / "val/val-e000-s00000.tar")) == 100


@pytest.mark.parametrize("command", ["generate", "finalize", "verify", "preview"])
def test_every_command_has_help(command, capsys):
    assert run_data_gen([command, "--help"], capsys)[0] == 0


def test_module_entry_point_reports_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "data_gen", "verify", str(tmp_path / "none")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
