"""Every bad input is one line on stderr, a non-zero exit and no traceback; good files survive."""

from __future__ import annotations

import errno
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seqtrain.data.format import iter_shard_chunks
from support import REPO
from support.generate import run_data_gen, tiny_generate_argv


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("seqtrain-data: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--train-size", "0"], "--train-size"),
        (["--val-size", "-5"], "--val-size"),
        (["--epochs", "0"], "--epochs"),
        (["--shard-size", "0"], "--shard-size"),
        (["--length-weights", "0", "0", "0"], "--length-weights"),
        (["--length-weights", "-1", "1", "1"], "--length-weights"),
        (["--length-weights", "1", "x", "1"], "length"),
        (["--node-rank", "2", "--num-nodes", "2"], "--node-rank"),
        (["--no-such-flag"], "no-such-flag"),
    ],
)
def test_bad_flags(flags, needle, mnist_dir, tmp_path, capsys):
    argv = [*tiny_generate_argv(mnist_dir, tmp_path / "out"), *flags]
    assert_one_line_error(*run_data_gen(argv, capsys)[::2], needle)
    assert not (tmp_path / "out").exists()


def _broken_copy(mnist_dir: Path, folder: Path, damage) -> Path:
    folder.mkdir()
    for f in mnist_dir.glob("*-ubyte*"):
        shutil.copy(f, folder / f.name)
    damage(folder)
    return folder


def _truncate(folder: Path) -> None:
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:2000])


def _flip_content(folder: Path) -> None:
    path = folder / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[100] ^= 1
    path.write_bytes(gzip.compress(bytes(data)))


def _remove_one(folder: Path) -> None:
    next(folder.glob("train-labels*")).unlink()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [(_truncate, "t10k-labels"), (_flip_content, "MD5"), (_remove_one, "no MNIST IDX files")],
)
def test_bad_mnist(damage, needle, mnist_dir, tmp_path, capsys):
    broken = _broken_copy(mnist_dir, tmp_path / "mnist", damage)
    code, _, err = run_data_gen(tiny_generate_argv(broken, tmp_path / "out"), capsys)
    assert_one_line_error(code, err, needle)


def test_offline_without_mnist_says_what_to_pass(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    def offline_mnist(root, **kwargs):
        print("Downloading https://example.invalid/train-images-idx3-ubyte.gz")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirrors")

    monkeypatch.delenv("SEQTRAIN_MNIST_DIR", raising=False)
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline_mnist)
    argv = ["generate", "--out", str(tmp_path / "out"), "--download-dir", str(tmp_path / "dl")]
    code, out, err = run_data_gen(argv, capsys)
    assert_one_line_error(code, err, "--mnist-dir", "SEQTRAIN_MNIST_DIR")
    assert out == ""


def test_mnist_dir_from_env_and_torchvision_layout(mnist_dir, tmp_path, monkeypatch, capsys):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in mnist_dir.glob("*-ubyte.gz"):  # decompressed, as torchvision leaves them
        (raw / f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
    monkeypatch.setenv("SEQTRAIN_MNIST_DIR", str(tmp_path / "root"))
    argv = tiny_generate_argv(mnist_dir, tmp_path / "out")
    del argv[1:3]  # no --mnist-dir
    code, _, err = run_data_gen(argv, capsys)
    assert code == 0, err


def test_unwritable_output(mnist_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    code, _, err = run_data_gen(tiny_generate_argv(mnist_dir, tmp_path / "file" / "out"), capsys)
    assert_one_line_error(code, err, "cannot write")


def test_other_config_needs_overwrite(mnist_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_data_gen(tiny_generate_argv(mnist_dir, out), capsys)[0] == 0
    reseeded = [*tiny_generate_argv(mnist_dir, out), "--seed", "1"]
    assert_one_line_error(*run_data_gen(reseeded, capsys)[::2], "--overwrite")
    fewer = [
        *tiny_generate_argv(mnist_dir, out),
        "--seed",
        "1",
        "--epochs",
        "1",
        "--overwrite",
    ]
    code, out_text, err = run_data_gen(fewer, capsys)
    assert code == 0, err
    assert "18 written" not in out_text and not list(out.glob("train/train-e001-*"))
    assert run_data_gen(["verify", str(out)], capsys)[0] == 0


def test_foreign_folder_needs_overwrite(mnist_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code, _, err = run_data_gen(tiny_generate_argv(mnist_dir, tmp_path / "out"), capsys)
    assert_one_line_error(code, err, "not made by seqtrain-data")


def test_sibling_node_claim_in_progress_is_not_foreign(mnist_dir, tmp_path, capsys):
    """Array tasks start together: node 1 may see node 0's folder after its mkdir and before its
    generate.json is renamed into place (only seqtrain-data's own entries and temp files)."""
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / ".generate.json.k3j2.tmp").write_text("{")
    argv = [*tiny_generate_argv(mnist_dir, out), "--num-nodes", "2", "--node-rank", "1"]
    code, _, err = run_data_gen(argv, capsys)
    assert code == 0, err
    assert json.loads((out / "generate.json").read_text())["num_nodes"] == 2
    assert list((out / "records").rglob("*.json"))


def test_disk_full_keeps_finished_shards(mnist_dir, tmp_path, monkeypatch, capsys):
    """ENOSPC at the 4th fsync: one line, earlier shards intact, no file under a final name torn."""
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    code, _, err = run_data_gen(tiny_generate_argv(mnist_dir, out), capsys)
    assert_one_line_error(code, err, "No space left")
    shards = list(out.glob("*/*.tar"))
    assert len(shards) == 1  # fsyncs: generate.json, shard 1, its record, shard 2 -> failed
    assert sum(len(c[2]) for c in iter_shard_chunks(shards[0])) == 100
    assert not list(out.rglob("*.tmp"))


def test_file_size_limit_in_worker_processes(mnist_dir, tmp_path):
    """A real write failure (RLIMIT_FSIZE -> EFBIG) inside pool workers: one line, exit 2."""

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    argv = [*tiny_generate_argv(mnist_dir, tmp_path / "out", workers=2)]
    proc = subprocess.run(
        [sys.executable, "-m", "data_gen", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=120,
    )
    assert_one_line_error(proc.returncode, proc.stderr, "File too large")
    assert not list((tmp_path / "out").glob("*/*.tar"))
