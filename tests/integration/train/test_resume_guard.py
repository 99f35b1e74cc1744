"""Resume checks what it resumes: other shards or changed settings are refused, naming them,
unless --accept-changes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from seqtrain.components.resume_guard import data_fingerprint, identity_changes, run_identity
from seqtrain.config import RunConfig
from seqtrain.data.format import Manifest, load_manifest
from support.generate import tiny_generate_argv
from support.training import job_argv, refusal, run_in_process


def test_fingerprint_follows_the_shard_bytes_not_the_folder(tiny_shards: Path) -> None:
    manifest = load_manifest(tiny_shards)
    moved = Manifest(Path("/elsewhere"), manifest.raw)
    assert data_fingerprint(moved) == data_fingerprint(manifest)
    changed = copy.deepcopy(manifest.raw)
    changed["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
    assert data_fingerprint(Manifest(tiny_shards, changed)) != data_fingerprint(manifest)


def test_changes_name_each_setting_old_to_new(tiny_shards: Path) -> None:
    manifest = load_manifest(tiny_shards)
    cfg = RunConfig()
    old = run_identity(cfg, manifest)
    cfg.optim.lr, cfg.train.seed = 0.5, 7
    assert identity_changes(old, run_identity(cfg, manifest)) == [
        "--lr 0.001 -> 0.5",
        "--seed 0 -> 7",
    ]
    cfg.data.shuffle_buffer, cfg.train.cpu = 5, True  # the shuffle counts, --cpu does not
    cfg.data.num_workers = 5  # a resume re-deals the epoch over any worker count
    changes = identity_changes(old, run_identity(cfg, manifest))
    assert "--shuffle-buffer 8192 -> 5" in changes
    assert not any("--cpu" in c or "--num-workers" in c for c in changes)


@pytest.fixture(scope="module")
def reseeded_shards(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny shard set generated again with `--seed 1`: same sizes, other samples."""
    from data_gen.cli import main

    out = tmp_path_factory.mktemp("reseeded")
    argv = tiny_generate_argv(mnist_dir, out)
    argv[argv.index("--seed") + 1] = "1"
    main(argv)
    return out


@pytest.fixture(scope="module")
def trained(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("guarded")
    run_in_process(job_argv(tiny_shards, out, epochs=2))
    return out


def test_resume_on_regenerated_shards_is_refused_then_accepted_with_the_flag(
    trained: Path, reseeded_shards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = job_argv(reseeded_shards, trained, "--resume", "auto", epochs=2)
    line = refusal(argv, capsys)
    assert line.startswith("seqtrain: error: resume from") and "refused" in line, line
    assert "data (shards)" in line and "--accept-changes" in line, line
    run_in_process([*argv, "--accept-changes"])
    assert "resuming with accepted changes: data (shards)" in capsys.readouterr().out


def test_resume_with_a_changed_setting_names_it(
    trained: Path, tiny_shards: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refusal(
        job_argv(tiny_shards, trained, "--resume", "auto", "--batch-size", "8", epochs=2), capsys
    )
    assert "--batch-size 16 -> 8" in line and "data" not in line.split("refused")[1], line
