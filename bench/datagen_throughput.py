"""data_gen throughput: sequences/s with 1 and 2 worker processes vs the seed's in-memory stitch.

Usage: .venv/bin/python -m bench.datagen_throughput --mnist-dir ../shared/mnist
Both generate runs write real shards (tar + record) into a temporary folder. The machine is
shared, so the three measurements are interleaved over --repeats rounds and each keeps its best
round. Prints a table and one JSON line with the ratios.
Targets: 1 worker >= 1.0x baseline, 2 workers >= 1.7x 1 worker.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.emit import emit_result
from data_gen.config import GenConfig
from data_gen.generate import run_jobs
from data_gen.mnist import load_mnist
from data_gen.plan import split_plan
from data_gen.writer import WriterContext

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def baseline(path: Path, mnist_dir: Path) -> Callable[[int], float]:
    """The seed's `stitch` (augmentation on, nothing written): n -> sequences/s on one thread."""
    spec = importlib.util.spec_from_file_location("seed_baseline", path)
    seed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed)
    images, labels, _, _ = (torch.from_numpy(np.array(a)) for a in seed.load(str(mnist_dir)))
    generator = torch.Generator().manual_seed(0)
    seed.stitch(images, labels, 1000, generator, True)  # warm-up
    return lambda n: n / timed(lambda: seed.stitch(images, labels, n, generator, True))


def generate_rate(ctx: WriterContext, n: int, shard_size: int, workers: int) -> float:
    """Train shards (augmented) written to a fresh folder by `workers` processes."""
    with tempfile.TemporaryDirectory(dir=ctx.out) as tmp:
        jobs = split_plan("train", n, 1, shard_size)
        run_ctx = WriterContext(**{**ctx.__dict__, "out": Path(tmp)})
        return n / timed(lambda: run_jobs(jobs, run_ctx, workers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-dir", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, default=REPO / "../shared/bench/seed_baseline.py")
    parser.add_argument("--sequences", type=int, default=108000, help="generated per run")
    parser.add_argument("--baseline-sequences", type=int, default=54000, help="one seed epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--tmp", type=Path, default=None, help="where shards are written")
    parser.add_argument("--json-out", type=Path, help="also write the JSON line here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    base_rate = baseline(args.baseline, args.mnist_dir)
    mnist = load_mnist(args.mnist_dir, Path("unused"))
    base = one = two = 0.0
    with tempfile.TemporaryDirectory(dir=args.tmp) as out:
        ctx = WriterContext.from_config(GenConfig(out=Path(out), chunk_size=args.chunk_size), mnist)
        for _ in range(args.repeats):
            base = max(base, base_rate(args.baseline_sequences))
            one = max(one, generate_rate(ctx, args.sequences, args.shard_size, 1))
            two = max(two, generate_rate(ctx, args.sequences, args.shard_size, 2))

    print(f"{'pipeline':<44}{'sequences/s':>12}")
    print(f"{'seed baseline stitch (in memory, 1 thread)':<44}{base:>12,.0f}")
    print(f"{'generate, 1 worker (shards on disk)':<44}{one:>12,.0f}")
    print(f"{'generate, 2 workers (shards on disk)':<44}{two:>12,.0f}")
    result = {
        "sequences": args.sequences,
        "repeats": args.repeats,
        "baseline_seq_s": round(base),
        "workers1_seq_s": round(one),
        "workers2_seq_s": round(two),
        "workers1_vs_baseline": round(one / base, 2),
        "workers2_vs_workers1": round(two / one, 2),
    }
    emit_result(result, args.json_out)


if __name__ == "__main__":
    main()
