"""`seqtrain-data verify OUT`: each shard against the manifest (presence, sha256, count, decode)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from seqtrain.data.format import SPLITS, ShardInfo, iter_shard_chunks, load_manifest, sha256_file


@dataclass
class VerifyConfig:
    """Check every shard listed in OUT/manifest.json; exit 1 naming each bad one."""

    out: tyro.conf.Positional[Path]
    """The generated data folder."""


def shard_problem(shard: ShardInfo) -> str | None:
    """Why a shard is bad, or None when it is intact."""
    if not shard.path.is_file():
        return "missing"
    if sha256_file(shard.path) != shard.sha256:
        return "sha256 differs from the manifest"
    try:
        count = sum(len(labels) for _, _, labels in iter_shard_chunks(shard.path))
    except ValueError as e:
        return f"does not decode: {e}"
    return None if count == shard.count else f"{count} samples, manifest says {shard.count}"


def verify(out: Path) -> int:
    """Print a per-split summary; returns the number of bad shards."""
    manifest = load_manifest(out)
    bad = 0
    for split in SPLITS:
        shards = [s for e in range(manifest.epochs(split)) for s in manifest.shards(split, e)]
        problems = [(s, shard_problem(s)) for s in shards]
        for shard, problem in problems:
            if problem:
                print(f"BAD {shard.path}: {problem}", file=sys.stderr)
        failed = sum(1 for _, p in problems if p)
        samples = sum(s.count for s in shards)
        print(f"{split}: {len(shards) - failed}/{len(shards)} shards ok, {samples} sequences")
        bad += failed
    return bad
