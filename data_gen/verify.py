"""`seqtrain-data verify OUT`: each shard against the manifest (presence, sha256, count, decode)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from seqtrain.data.format import SPLITS, load_manifest, shard_problem


@dataclass
class VerifyConfig:
    """Check every shard listed in OUT/manifest.json; exit 1 naming each bad one."""

    out: tyro.conf.Positional[str]
    """The generated data folder or URL (s3://, gs://, http(s)://, file://)."""


def verify(out: str | Path) -> int:
    """Print a per-split summary; returns the number of bad shards. Remote shards are each
    downloaded once, hashed and decoded on the way."""
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
