"""Shards in object storage and behind HTTP: generate to, verify, train and evaluate from a real
S3-compatible server (moto's, on loopback) and Python's HTTP server; integrity on the way,
one-line errors, retries and resume when the server goes away, the local shard cache."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import random
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bench.stores import BUCKET, FAST_RETRIES, free_port, http_server, moto_server, s3_env
from data_gen.cli import main as data_main
from data_gen.verify import verify
from seqtrain.common.errors import UserError
from seqtrain.common.storage import open_shard, sha256_file
from seqtrain.config import DataConfig
from seqtrain.data.format import (
    MANIFEST_NAME,
    ShardInfo,
    load_manifest,
    shard_problems,
)
from seqtrain.data.stream import eval_loader
from support.distributed import cpu_env, launch_argv
from support.generate import tiny_generate_argv
from support.training import assert_checkpoints_loadable, epoch_of, error_line, train_argv

s3fs = pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server with bucket BUCKET; this process's S3 client points at it (the
    standard AWS variables). Yields (endpoint, a raw s3fs client for test-side surgery)."""
    server = moto_server().start()
    env = s3_env(server.url)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        raw = s3fs.S3FileSystem(
            key="testing", secret="testing", client_kwargs={"endpoint_url": server.url}
        )
        raw.mkdir(BUCKET)
        yield server.url, raw
    server.stop()


@pytest.fixture(scope="module")
def bucket_shards(s3, mnist_dir: Path) -> str:
    """The tiny set generated straight into the bucket (read-only for tests)."""
    url = f"s3://{BUCKET}/tiny"
    data_main(tiny_generate_argv(mnist_dir, url))  # type: ignore[arg-type]
    return url


def put_folder(raw, folder: Path, prefix: str) -> str:
    """Upload a local shard folder's files under s3://BUCKET/prefix; returns the URL."""
    for path in folder.rglob("*"):
        if path.is_file():
            raw.pipe_file(f"{BUCKET}/{prefix}/{path.relative_to(folder)}", path.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def eval_ids(manifest, split: str = "test") -> list[np.ndarray]:
    cfg = DataConfig(eval_batch_size=100, num_workers=0)
    return [labels.numpy() for _, labels in eval_loader(manifest, cfg, split, 0, 1)]


def payload_offset(tar_path: Path) -> int:
    """A byte inside the first image array of a shard: flipping it still decodes."""
    with tarfile.open(tar_path) as tar:
        first = next(iter(tar))
        return first.offset_data + first.size // 2


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, env=cpu_env(**env), capture_output=True, text=True, timeout=240, check=False
    )


def test_file_url_is_the_folder_and_other_forms_are_one_line(tiny_shards: Path) -> None:
    manifest = load_manifest(f"file://{tiny_shards}")
    assert manifest.root == tiny_shards
    assert manifest.shards("test")[0].path == tiny_shards / "test/test-e000-s00000.tar"
    with pytest.raises(UserError, match=r"^ftp://host/data: unsupported URL scheme ftp://"):
        load_manifest("ftp://host/data")
    with pytest.raises(UserError, match=r"^pipe:curl -s x: pipe: commands are not supported"):
        load_manifest("pipe:curl -s x")


def test_generate_to_bucket_equals_local_folder(
    bucket_shards: str, tiny_shards: Path, s3, tmp_path: Path
) -> None:
    _, raw = s3
    local = json.loads((tiny_shards / MANIFEST_NAME).read_text())
    assert json.loads(raw.cat_file(f"{bucket_shards[5:]}/{MANIFEST_NAME}")) == local
    for shard in load_manifest(tiny_shards).shards("train", 1):
        relpath = shard.path.relative_to(tiny_shards)
        assert raw.cat_file(f"{bucket_shards[5:]}/{relpath}") == shard.path.read_bytes()
    assert verify(bucket_shards) == 0
    data_main(["preview", bucket_shards, "-n", "4", "-o", str(tmp_path / "grid.png")])
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_rerun_uploads_only_missing_or_wrong(s3, mnist_dir: Path, capsys) -> None:
    _, raw = s3
    url = f"s3://{BUCKET}/rerun"
    argv = tiny_generate_argv(mnist_dir, url)  # type: ignore[arg-type]
    data_main(argv)
    prefix = url[5:]
    raw.rm_file(f"{prefix}/train/train-e000-s00001.tar")  # missing
    raw.pipe_file(f"{prefix}/train/train-e001-s00002.tar", b"truncated")  # wrong size
    raw.rm_file(f"{prefix}/records/val/val-e000-s00001.tar.json")  # upload never confirmed
    capsys.readouterr()
    data_main(argv)
    assert "(3 written, 15 already complete)" in capsys.readouterr().out
    assert verify(url) == 0


def test_num_nodes_and_finalize_against_a_bucket(s3, mnist_dir: Path, tiny_shards: Path) -> None:
    _, raw = s3
    url = f"s3://{BUCKET}/nodes"
    argv = [*tiny_generate_argv(mnist_dir, url), "--num-nodes", "2"]  # type: ignore[arg-type]
    data_main([*argv, "--node-rank", "0"])
    with pytest.raises(SystemExit) as stopped:
        data_main(["finalize", url])
    assert stopped.value.code == 2
    data_main([*argv, "--node-rank", "1"])
    assert not raw.exists(f"{url[5:]}/{MANIFEST_NAME}")  # only finalize writes it
    data_main(["finalize", url])
    local = json.loads((tiny_shards / MANIFEST_NAME).read_text())
    assert json.loads(raw.cat_file(f"{url[5:]}/{MANIFEST_NAME}")) == local


@pytest.mark.faults
def test_flipped_byte_is_an_error_naming_the_url(s3, tiny_shards: Path, capsys) -> None:
    _, raw = s3
    url = put_folder(raw, tiny_shards, "flipped")
    shard = "test/test-e000-s00001.tar"
    data = bytearray(raw.cat_file(f"{url[5:]}/{shard}"))
    data[payload_offset(tiny_shards / shard)] ^= 0x01
    raw.pipe_file(f"{url[5:]}/{shard}", bytes(data))

    manifest = load_manifest(url)
    # The start-up check only looks shards up (their bytes are hashed while they stream).
    assert shard_problems(manifest, check_sha256=True) == {}
    with pytest.raises(UserError, match=f"shard {url}/{shard}: sha256 differs"):
        eval_ids(manifest)
    assert verify(url) == 1
    assert f"BAD {url}/{shard}: sha256 differs" in capsys.readouterr().err


@pytest.mark.faults
def test_missing_object_is_one_line_naming_it(s3, tiny_shards: Path, capsys) -> None:
    _, raw = s3
    url = put_folder(raw, tiny_shards, "holed")
    shard = "test/test-e000-s00002.tar"
    raw.rm_file(f"{url[5:]}/{shard}")
    manifest = load_manifest(url)
    assert shard_problems(manifest, check_sha256=True) == {f"{url}/{shard}": "missing"}
    with pytest.raises(UserError, match=f"^shard {url}/{shard}: no such object or bucket$"):
        eval_ids(manifest)
    for where in (f"s3://{BUCKET}/nowhere", "s3://no-such-bucket/data"):
        with pytest.raises(SystemExit) as stopped:
            data_main(["verify", where])
        assert stopped.value.code == 2
        assert capsys.readouterr().err.strip() == (
            f"seqtrain-data: error: {where}/{MANIFEST_NAME}: no such object or bucket "
            f"(is {where} a seqtrain-data output folder?)"
        )


@pytest.mark.faults
def test_wrong_credential_is_one_line() -> None:
    server = moto_server(auth=True).start()
    try:
        url = f"s3://{BUCKET}/tiny"
        done = run_cli([sys.executable, "-m", "data_gen", "verify", url], s3_env(server.url))
    finally:
        server.stop()
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"seqtrain-data: error: {url}/{MANIFEST_NAME}: access denied (check the store's "
        f"credentials) (is {url} a seqtrain-data output folder?)"
    )


@pytest.mark.faults
def test_store_gone_is_one_line_after_retries() -> None:
    """Nothing listens at the endpoint (a store that died): each read is retried, then one
    line names the URL and the last failure."""
    url = f"s3://{BUCKET}/tiny"
    env = s3_env(f"http://127.0.0.1:{free_port()}")
    done = run_cli([sys.executable, "-m", "data_gen", "verify", url], env)
    assert done.returncode == 2
    line = error_line(done.stderr)
    prefix = f"seqtrain-data: error: {url}/{MANIFEST_NAME}: unreachable after 3 tries"
    assert line.startswith(prefix), line
    assert "Could not connect to the endpoint URL" in line, line


@pytest.mark.faults
def test_missing_store_client_names_the_extra() -> None:
    code = "import sys; sys.modules['s3fs'] = None; from data_gen.cli import main; main()"
    done = run_cli([sys.executable, "-c", code, "verify", "s3://b/data"], {})
    assert done.returncode == 2
    assert 'install seqtrain with its [s3] extra (pip install ".[s3]")' in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_cache_downloads_once_and_refetches_a_damaged_copy(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """Over HTTP: a pass with the cache, then the server stopped: the same batches come from
    the cache alone. A damaged cached copy is fetched again (an error while the server is
    down, the right bytes once it is back)."""
    server = http_server(tiny_shards.parent).start()
    cache = tmp_path / "cache"
    url = f"{server.url}/{tiny_shards.name}"
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in FAST_RETRIES.items():
                patch.setenv(name, value)
            manifest = load_manifest(url, cache_dir=cache)
            first = eval_ids(manifest)
            shards = manifest.shards("test")
            assert sorted(p.name for p in cache.iterdir()) == sorted(
                f"{s.sha256}.tar" for s in shards
            )
            server.stop()
            assert all(np.array_equal(a, b) for a, b in zip(eval_ids(manifest), first, strict=True))
            damaged = cache / f"{shards[1].sha256}.tar"
            damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x01")
            with pytest.raises(UserError, match=f"shard {shards[1].path}: unreachable after 3"):
                eval_ids(manifest)
            server.start()
            assert all(np.array_equal(a, b) for a, b in zip(eval_ids(manifest), first, strict=True))
            assert sha256_file(damaged) == shards[1].sha256
    finally:
        server.stop()


@pytest.fixture
def served(tiny_shards: Path):
    """The tiny set behind Python's HTTP server, with fast retries; yields its URL."""
    server = http_server(tiny_shards.parent).start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in FAST_RETRIES.items():
                patch.setenv(name, value)
            yield f"{server.url}/{tiny_shards.name}"
    finally:
        server.stop()


def capped_shards(url: str, cache: Path, max_bytes: int) -> list[ShardInfo]:
    """Epoch 0's training shards (six of one size) read through `cache` capped at `max_bytes`,
    as `--cache-dir` and `--cache-max-gb` configure them."""
    cfg = DataConfig(cache_dir=cache, cache_max_gb=max_bytes / 1e9)
    return load_manifest(url, cfg.cache_dir, cfg.cache_max_bytes).shards("train", 0)


def read_shard(shard: ShardInfo) -> bytes:
    with open_shard(shard.path, shard.sha256, shard.cache_dir, shard.cache_max_bytes) as f:
        return f.read()


def cached(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir()}


def test_cache_cap_evicts_the_least_recently_used_shards(
    served: str, tiny_shards: Path, tmp_path: Path
) -> None:
    """Room for two shards and a half: a third download deletes the shard used least recently;
    a shard read from the cache counts as used, so it stays."""
    size = (tiny_shards / "train" / "train-e000-s00000.tar").stat().st_size
    cache = tmp_path / "cache"
    a, b, c = capped_shards(served, cache, max_bytes=size * 5 // 2)[:3]
    for shard in (a, b, a):  # a downloaded, b downloaded, a read from the cache
        read_shard(shard)
        time.sleep(0.05)  # file times are as coarse as the kernel's clock tick
    assert cached(cache) == {f"{a.sha256}.tar", f"{b.sha256}.tar"}
    assert hashlib.sha256(read_shard(c)).hexdigest() == c.sha256
    assert cached(cache) == {f"{a.sha256}.tar", f"{c.sha256}.tar"}


def test_cache_cap_keeps_the_shard_being_read_and_refetches_an_evicted_one(
    served: str, tmp_path: Path
) -> None:
    """A cap below one shard: each download deletes every other copy but its own. A reader
    holding a deleted copy open reads it to the end; the next read of it downloads it again."""
    cache = tmp_path / "cache"
    a, b = capped_shards(served, cache, max_bytes=1)[:2]
    with open_shard(a.path, a.sha256, a.cache_dir, a.cache_max_bytes) as reading:
        start = reading.read(1000)
        assert hashlib.sha256(read_shard(b)).hexdigest() == b.sha256
        assert cached(cache) == {f"{b.sha256}.tar"}
        assert hashlib.sha256(start + reading.read()).hexdigest() == a.sha256
    assert hashlib.sha256(read_shard(a)).hexdigest() == a.sha256
    assert cached(cache) == {f"{a.sha256}.tar"}


def read_all_in_random_order(shards: list[ShardInfo], seed: int) -> list[str]:
    """The sha256 of each shard's bytes, read three times over in a seeded random order."""
    order = [shard for _ in range(3) for shard in shards]
    random.Random(seed).shuffle(order)
    return [f"{s.sha256} {hashlib.sha256(read_shard(s)).hexdigest()}" for s in order]


def test_capped_cache_shared_by_several_processes_serves_every_shard_intact(
    served: str, tiny_shards: Path, tmp_path: Path
) -> None:
    """Three processes (as ranks and loader workers on one node) read the six shards in their
    own orders through one cache with room for two: copies are deleted under readers and
    fetched again, and every read still returns the shard's exact bytes."""
    size = (tiny_shards / "train" / "train-e000-s00000.tar").stat().st_size
    cache = tmp_path / "cache"
    shards = capped_shards(served, cache, max_bytes=size * 2)
    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(3, mp_context=fork) as pool:
        reads = list(pool.map(read_all_in_random_order, [shards] * 3, range(3)))
    for lines in reads:
        assert len(lines) == 3 * len(shards)
        assert all(want == got for want, got in (line.split() for line in lines))
    # At most the cap, plus the downloads the other two processes finished after the last
    # eviction.
    assert sum(p.stat().st_size for p in cache.glob("*.tar")) <= size * 4


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_from_bucket_equal_local_folder(
    bucket_shards: str, tiny_shards: Path, s3, tmp_path: Path
) -> None:
    """The same 2-rank run from the bucket (through a cache) and from the folder: the same test
    metrics, every shard read cached once; then
    `seqtrain evaluate --shards URL` of the bucket run (one process) gives them again."""
    endpoint, _ = s3
    env = s3_env(endpoint)
    metrics = {}
    cache = tmp_path / "cache"  # shared by both ranks and their workers, as on one node
    for name, shards, extra in (
        ("bucket", bucket_shards, ["--cache-dir", str(cache)]),
        ("folder", str(tiny_shards), []),
    ):
        args = train_argv(shards, tmp_path, name, "--epochs", "1", "--num-workers", "1", *extra)  # type: ignore[arg-type]
        done = run_cli([*launch_argv(), *args, "--wandb-mode", "disabled"], env)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics[name] = json.loads((tmp_path / name / "test_metrics.json").read_text())
    assert metrics["bucket"] == metrics["folder"]
    manifest = load_manifest(tiny_shards)
    read = [*manifest.shards("train", 0), *manifest.shards("val"), *manifest.shards("test")]
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s.sha256}.tar" for s in read)
    out = tmp_path / "evaluated.json"
    evaluate = ["evaluate", "--checkpoint", str(tmp_path / "bucket"), "--shards", bucket_shards]
    done = run_cli([sys.executable, "-m", "seqtrain", *evaluate, "--json", str(out)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["count"] == metrics["bucket"]["count"]
    assert result["exact_match"] == metrics["bucket"]["exact_match"]
    assert result["confusion"] == metrics["bucket"]["confusion"]


@pytest.mark.slow
@pytest.mark.faults
def test_server_killed_mid_run_is_one_line_then_resume(tiny_shards: Path, tmp_path: Path) -> None:
    """The HTTP server dies once epoch 1's checkpoint is in place: the reads retry, then stop
    the job with one line naming the URL, the checkpoint intact; with the server back on the
    same port, `--resume auto` completes the run."""
    server = http_server(tiny_shards.parent).start()
    url = f"{server.url}/{tiny_shards.name}"
    argv = [sys.executable, "-m", "seqtrain",
            *train_argv(url, tmp_path, "job", "--epochs", "4", "--wandb-mode", "disabled")]  # type: ignore[arg-type]  # fmt: skip
    last = tmp_path / "job" / "checkpoints" / "last"
    try:
        proc = subprocess.Popen(argv, env=cpu_env(**FAST_RETRIES), text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        while epoch_of(last) is None and proc.poll() is None:
            time.sleep(0.005)
        server.stop()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err[-3000:]
        line = error_line(err)
        assert line.startswith(f"seqtrain: error: shard {url}/"), line
        assert ": unreachable after 3 tries (Cannot connect to host" in line, line
        assert epoch_of(last) is not None
        assert_checkpoints_loadable(tmp_path / "job")
        server.start()
        done = run_cli([*argv, "--resume", "auto"], {})
        assert done.returncode == 0, done.stderr[-3000:]
        assert "resumed from" in done.stdout + done.stderr
        assert json.loads((tmp_path / "job" / "test_metrics.json").read_text())["count"] == 250
    finally:
        server.stop()
