"""`seqtrain-data` in tests: the tiny set's argv, a run in this process, its shards' bytes."""

from __future__ import annotations

from pathlib import Path

from data_gen.cli import main
from seqtrain.data.format import SPLITS


def tiny_generate_argv(mnist_dir: Path, out: Path, workers: int = 1) -> list[str]:
    """`generate` of a tiny set: shard counts uneven vs ranks x workers, a short last shard."""
    return [
        "generate",
        "--mnist-dir", str(mnist_dir),
        "--out", str(out),
        "--train-size", "600",
        "--val-size", "250",
        "--test-size", "250",
        "--epochs", "2",
        "--shard-size", "100",
        "--chunk-size", "32",
        "--workers", str(workers),
        "--seed", "0",
    ]  # fmt: skip


def run_data_gen(argv: list[str], capsys) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `seqtrain-data` `argv` run in this process."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def shard_bytes_of(out: Path) -> dict[str, bytes]:
    """Every shard file of a generated set, by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for s in SPLITS for p in (out / s).glob("*")}
