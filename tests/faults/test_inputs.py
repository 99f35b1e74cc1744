"""Fault injection, trainer inputs: damaged shards and hand-edited manifests give one error
line naming the file; `--skip-corrupt` skips them, counted on the console and in W&B."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from seqtrain.components.tracking import read_offline_run
from support.training import read_jsonl, run_in_process, train_argv

pytestmark = pytest.mark.faults

SHARD = "train/train-e000-s00001.tar"
VAL_SHARD = "val/val-e000-s00001.tar"  # evaluation reads every sample: counts are checked


def edit_manifest(shards: Path, edit: Callable[[dict], None]) -> None:
    path = shards / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def entry(manifest: dict, relpath: str = SHARD) -> dict:
    split = relpath.split("/")[0]
    return next(s for s in manifest["splits"][split]["shards"] if s["path"] == relpath)


def truncate(shards: Path) -> None:
    path = shards / SHARD
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte(offset: int) -> Callable[[Path], None]:
    def damage(shards: Path) -> None:
        data = bytearray((shards / SHARD).read_bytes())
        data[offset] ^= 0x01
        (shards / SHARD).write_bytes(bytes(data))

    return damage


def recount(delta: int) -> Callable[[Path], None]:
    def damage(shards: Path) -> None:
        edit_manifest(shards, lambda m: entry(m, VAL_SHARD).update(count=100 + delta))

    return damage


NO_CHECK = "--no-verify-shards"

# name: (damage to a copy of the shards, extra flags, text the error line holds)
CASES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    # Found by the start-up check (on by default) and, without it, where the shard is read.
    "truncated shard": (truncate, [], SHARD),
    "truncated shard, read path": (truncate, [NO_CHECK], SHARD),
    "empty shard": (lambda s: (s / SHARD).write_bytes(b""), [], SHARD),
    "empty shard, read path": (lambda s: (s / SHARD).write_bytes(b""), [NO_CHECK], SHARD),
    "missing shard": (lambda s: (s / SHARD).unlink(), [NO_CHECK], f"{SHARD} is missing"),
    "flipped byte in a tar header": (flip_byte(100), [NO_CHECK], f"{SHARD} is corrupt"),
    # A flipped pixel keeps the tar and npy valid: only the sha256 check finds it.
    "flipped pixel byte": (flip_byte(2000), [], f"{SHARD}: sha256 differs"),
    "manifest: count too high": (recount(+1), [NO_CHECK], f"{VAL_SHARD} holds 100 samples, fewer"),
    "manifest: count too low": (
        recount(-1),
        [NO_CHECK],
        f"{VAL_SHARD} holds 100 samples, its manifest 99",
    ),
    "manifest: wrong sha256": (
        lambda s: edit_manifest(s, lambda m: entry(m).update(sha256="0" * 64)),
        [],
        f"{SHARD}: sha256 differs",
    ),
    "manifest: garbage JSON": (
        lambda s: (s / "manifest.json").write_text('{"format": "seqtrain-sh'),
        [],
        "manifest.json is not readable JSON",
    ),
    "manifest: shard entry without count": (
        lambda s: edit_manifest(s, lambda m: entry(m).pop("count")),
        [],
        "manifest.json is malformed",
    ),
}


def damaged_copy(tiny_shards: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    damage(copy)
    return copy


@pytest.mark.parametrize("case", CASES)
def test_damaged_input_is_one_line_naming_the_file(
    case: str, tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage, flags, expected = CASES[case]
    shards = damaged_copy(tiny_shards, tmp_path, damage)
    argv = train_argv(shards, tmp_path, "bad", "--wandb-mode", "disabled", "--epochs", "1")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_in_process([*argv, *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    line = err.rstrip().split("\r")[-1]
    assert line.startswith("seqtrain: error: ") and expected in line, line


@pytest.mark.parametrize("flags", [["--skip-corrupt"], ["--skip-corrupt", NO_CHECK]])
def test_skip_corrupt_counts_and_logs_the_skipped_shards(
    flags: list[str], tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = damaged_copy(tiny_shards, tmp_path, truncate)
    (shards / "val/val-e000-s00000.tar").unlink()
    argv = train_argv(shards, tmp_path, "skip", "--wandb-mode", "offline", "--epochs", "1")
    run_in_process([*argv, *flags])
    out = capsys.readouterr().out
    assert "skipped 2 corrupt shard(s): " in out and SHARD in out and "val-e000-s00000" in out
    assert read_offline_run(tmp_path / "skip" / "wandb")["summary"]["data/skipped_shards"] == 2
    (epoch,) = read_jsonl(tmp_path / "skip" / "metrics.jsonl")
    assert epoch["val_count"] == 150  # 250 less the skipped shard's 100
