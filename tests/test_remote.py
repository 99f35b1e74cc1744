"""Shards in object storage and behind HTTP: generate to, verify, train and evaluate from a real
S3-compatible server (moto's, on loopback) and Python's HTTP server; integrity on the way,
one-line errors, retries and resume when the server goes away, the local shard cache."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_generate_argv
from storeutil import BUCKET, FAST_RETRIES, http_server, moto_server, s3_env
from test_faults_train import assert_checkpoints_loadable, epoch_of, error_line
from test_train import train_argv
from trainutil import cpu_env, free_port, launch_argv

from data_gen.cli import main as data_main
from data_gen.verify import verify
from seqtrain.config import DataConfig
from seqtrain.data.format import MANIFEST_NAME, load_manifest, sha256_file, shard_problems
from seqtrain.data.stream import eval_loader
from seqtrain.errors import UserError

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
    assert 'pip install "seqtrain[s3]"' in done.stderr
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
