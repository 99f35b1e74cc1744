"""`seqtrain-data generate`: render this node's shards with a pool of worker processes."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from data_gen.config import GenConfig
from data_gen.finalize import finalize
from data_gen.mnist import Mnist, load_mnist
from data_gen.outdir import RECORDS_DIR, claim
from data_gen.plan import ShardJob, node_jobs, plan_jobs
from data_gen.upload import claim_store, publish, unstored_jobs
from data_gen.writer import ShardRecord, WriterContext, produce
from seqtrain.common.errors import UserError
from seqtrain.common.storage import is_remote
from seqtrain.data.format import SPLITS

_WORKER_CONTEXT: WriterContext | None = None


def generate(cfg: GenConfig) -> None:
    jobs = plan_jobs(cfg)
    mine = node_jobs(jobs, cfg.num_nodes, cfg.node_rank)
    mnist = load_mnist(cfg.mnist_dir, cfg.download_dir)
    out = cfg.location
    start = time.perf_counter()
    if is_remote(out):
        written = _generate_to_store(cfg, mnist, mine)
    else:
        written = _generate_to_folder(cfg, mnist, jobs, mine)
    seconds = time.perf_counter() - start
    sequences = sum(job.count for job in mine)
    print(
        f"node {cfg.node_rank}/{cfg.num_nodes}: {len(mine)} shards ({written} written, "
        f"{len(mine) - written} already complete), {sequences} sequences in {seconds:.1f}s"
    )
    if cfg.num_nodes == 1:
        finalize(out)
    else:
        print(f"when every node is done: seqtrain-data finalize {cfg.out}")


def _generate_to_folder(
    cfg: GenConfig, mnist: Mnist, jobs: list[ShardJob], mine: list[ShardJob]
) -> int:
    try:
        claim(cfg, jobs)
        if cfg.num_nodes == 1:  # nobody else can be mid-write: temp files are from a killed run
            _remove_temp_files(cfg)
    except OSError as e:
        raise UserError(f"cannot write to --out {cfg.out}: {e.strerror or e}") from None
    return run_jobs(mine, WriterContext.from_config(cfg, mnist), cfg.num_workers)


def _generate_to_store(cfg: GenConfig, mnist: Mnist, mine: list[ShardJob]) -> int:
    """Render this node's shards not yet stored in a local staging folder, uploading each."""
    claim_store(cfg)
    todo = unstored_jobs(cfg, mine)
    with tempfile.TemporaryDirectory(prefix="seqtrain-data-") as staging:
        ctx = WriterContext.from_config(cfg, mnist, Path(staging))
        return run_jobs(todo, ctx, cfg.num_workers, partial(publish, cfg.location, Path(staging)))


def run_jobs(
    jobs: list[ShardJob],
    ctx: WriterContext,
    workers: int,
    publish: Callable[[ShardRecord], None] | None = None,
) -> int:
    """Produce every job with a progress bar (sequences/s); returns how many were written.
    `publish` is called in this process with each finished shard's record."""
    written = 0
    with tqdm(total=sum(j.count for j in jobs), unit="seq", unit_scale=True, disable=None) as bar:
        for record, wrote in _results(jobs, ctx, min(workers, len(jobs))):
            if publish is not None:
                publish(record)
            written += wrote
            bar.update(record.count)
    return written


def _results(
    jobs: list[ShardJob], ctx: WriterContext, workers: int
) -> Iterator[tuple[ShardRecord, bool]]:
    if workers <= 1:
        with _torch_threads(1):
            for job in jobs:
                yield produce(job, ctx)
        return
    # fork: workers share the MNIST pools copy-on-write instead of unpickling 50 MB each
    # (the pattern of torch's DataLoader, with one torch thread per worker).
    pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, (ctx,))
    with pool:
        yield from pool.imap_unordered(_produce_in_worker, jobs)


def _init_worker(ctx: WriterContext) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = ctx
    # The pool ends its workers with SIGTERM: a handler inherited from the forking process (a
    # trainer's preemption flag, say) must not keep one alive, blocking the pool's exit forever.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)


def _produce_in_worker(job: ShardJob) -> tuple[ShardRecord, bool]:
    assert _WORKER_CONTEXT is not None, "worker not initialised"
    return produce(job, _WORKER_CONTEXT)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """One thread like a pool worker (fair speed per core), restoring the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _remove_temp_files(cfg: GenConfig) -> None:
    """atomic_open's leftovers (`.<name>.<random>.tmp`) in the folders we write to."""
    out = cfg.location
    records = out / RECORDS_DIR
    folders = [out, *(out / s for s in SPLITS), *(records / s for s in SPLITS)]
    for folder in folders:
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
