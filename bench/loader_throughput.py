"""Loader throughput: samples/s of `train_loader` alone (no model), per worker process.

    .venv/bin/python -m bench.loader_throughput [--samples 20000] [--workers 0 1 2]
    .venv/bin/python -m bench.loader_throughput --store s3 --workers 2   # vs a loopback store

Writes synthetic shards to a temporary folder, runs whole training epochs of the loader for
each worker count and reports the best epoch (worker start-up included). "Per worker" divides
by the number of processes that load: the main process when --workers is 0. With --store, the
same shards are also served on loopback (`http`: Python's HTTP server over the folder; `s3`:
moto's S3 server, uploaded to a bucket) and streamed by URL (sha256 checked on the way):
each row then also gives the remote rate and its ratio to the folder's. Prints a table, then
one JSON line.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.emit import emit_result
from bench.stores import BUCKET, Server, http_server, moto_server, s3_env
from data_gen.synthetic import write_tiny_dataset
from seqtrain.config import DataConfig
from seqtrain.data.format import load_manifest
from seqtrain.data.global_batch import batch_sizes
from seqtrain.data.position import Position, plan_epoch
from seqtrain.data.stream import train_layout, train_loader, train_steps_per_epoch


def epoch_rate(manifest, cfg: DataConfig, epoch: int) -> float:
    """Samples/s of one full training epoch of the loader, consuming the batches."""
    steps = train_steps_per_epoch(manifest, cfg.batch_size)
    plan, _ = plan_epoch(Position(), epoch, train_layout(cfg, batch_sizes(cfg, 1)), 0, steps)
    start = time.perf_counter()
    samples = sum(len(labels) for _, labels in train_loader(manifest, cfg, plan, 0, 1))
    return samples / (time.perf_counter() - start)


def serve(store: str, folder: Path) -> tuple[Server, str]:
    """Start a loopback server holding `folder`'s shard set; (server, the set's URL)."""
    if store == "http":
        server = http_server(folder.parent).start()
        return server, f"{server.url}/{folder.name}"
    server = moto_server().start()
    os.environ.update(s3_env(server.url))
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.mkdir(BUCKET)
    fs.put(f"{folder}/", f"{BUCKET}/{folder.name}/", recursive=True)
    return server, f"s3://{BUCKET}/{folder.name}"


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
    parser.add_argument(
        "--store", choices=["http", "s3"], help="also stream the shards from this loopback server"
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON line here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        sizes = [args.samples // args.shards] * args.shards
        write_tiny_dataset(folder, {"train": sizes, "val": [1], "test": [1]}, args.chunk_size)
        server, url = serve(args.store, folder) if args.store else (None, None)
        try:
            sources = {"local": load_manifest(folder)}
            if url is not None:
                sources[args.store] = load_manifest(url)
            results = [rates(sources, workers, args) for workers in args.workers]
        finally:
            if server is not None:
                server.stop()

    print(f"{'workers':>8} {'samples/s':>12} {'per worker':>12}" + (
        f" {args.store + ' samples/s':>16} {'ratio':>6}" if args.store else ""))  # fmt: skip
    for r in results:
        line = f"{r['num_workers']:>8} {r['samples_per_s']:>12,.0f} {r['per_worker']:>12,.0f}"
        if args.store:
            line += f" {r['remote_samples_per_s']:>16,.0f} {r['remote_ratio']:>6.2f}"
        print(line)
    record = {"bench": "loader_throughput", "samples": sum(sizes), "results": results}
    if args.store:
        record["store"] = args.store
    emit_result(record, args.json_out)


def rates(sources: dict, workers: int, args: argparse.Namespace) -> dict:
    """Best epoch of each source (local first) for one worker count."""
    cfg = DataConfig(
        batch_size=args.batch_size, num_workers=workers, shuffle_buffer=args.shuffle_buffer
    )
    best = {
        name: max(epoch_rate(manifest, cfg, epoch) for epoch in range(args.epochs))
        for name, manifest in sources.items()
    }
    result = dict(
        num_workers=workers, samples_per_s=best["local"], per_worker=best["local"] / max(1, workers)
    )
    if args.store:
        remote = best[args.store]
        result.update(remote_samples_per_s=remote, remote_ratio=remote / best["local"])
    return result


if __name__ == "__main__":
    main()
