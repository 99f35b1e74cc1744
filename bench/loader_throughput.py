"""Loader throughput: samples/s of `train_loader` alone (no model), per worker process.

    .venv/bin/python bench/loader_throughput.py [--samples 20000] [--workers 0 1 2]

Writes synthetic shards to a temporary folder, runs whole training epochs of the loader for
each worker count and reports the best epoch (worker start-up included). "Per worker" divides
by the number of processes that load: the main process when --workers is 0. Prints a table,
then one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from emit import emit_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tiny-shard writer the tests use

from shardutil import write_tiny_dataset  # noqa: E402

from seqtrain.config import DataConfig  # noqa: E402
from seqtrain.data.format import load_manifest  # noqa: E402
from seqtrain.data.position import Position, plan_epoch  # noqa: E402
from seqtrain.data.stream import train_layout, train_loader, train_steps_per_epoch  # noqa: E402


def epoch_rate(manifest, cfg: DataConfig, epoch: int) -> float:
    """Samples/s of one full training epoch of the loader, consuming the batches."""
    steps = train_steps_per_epoch(manifest, cfg.batch_size, world_size=1)
    plan, _ = plan_epoch(Position(), epoch, train_layout(cfg, 1), 0, steps)
    start = time.perf_counter()
    samples = sum(len(labels) for _, labels in train_loader(manifest, cfg, plan, 0))
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples",
        type=int,
        default=100_000,
        help="training samples (one epoch; worker start-up is amortised over it)",
    )
    parser.add_argument("--shards", type=int, default=16, help="training shards")
    parser.add_argument("--chunk-size", type=int, default=256, help="sequences per tar sample")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--shuffle-buffer", type=int, default=8192)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per setting (best kept)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON line here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sizes = [args.samples // args.shards] * args.shards
        write_tiny_dataset(Path(tmp), {"train": sizes, "val": [1], "test": [1]}, args.chunk_size)
        manifest = load_manifest(tmp)
        results = []
        for workers in args.workers:
            cfg = DataConfig(
                shards=Path(tmp),
                batch_size=args.batch_size,
                num_workers=workers,
                shuffle_buffer=args.shuffle_buffer,
            )
            best = max(epoch_rate(manifest, cfg, epoch) for epoch in range(args.epochs))
            per_worker = best / max(1, workers)
            results.append(dict(num_workers=workers, samples_per_s=best, per_worker=per_worker))

    print(f"{'workers':>8} {'samples/s':>12} {'per worker':>12}")
    for r in results:
        print(f"{r['num_workers']:>8} {r['samples_per_s']:>12,.0f} {r['per_worker']:>12,.0f}")
    emit_result(
        {"bench": "loader_throughput", "samples": sum(sizes), "results": results}, args.json_out
    )


if __name__ == "__main__":
    main()
