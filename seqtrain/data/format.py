"""The on-disk contract between data_gen (writer) and the trainer (reader).

A shard is a plain tar that stock `webdataset` reads. Each tar *sample* is a chunk of up to
`chunk_size` sequences, stored as two raw numpy arrays (decoding one 600 KB array is far
cheaper than decoding hundreds of tiny PNGs):

    <key>.img.npy   uint8 [n, 28, 84]   white digits on black, slot i = columns [28i, 28i+28)
    <key>.cls.npy   uint8 [n, 3]        class per slot, 0-9, BLANK (10) for an empty slot

Keys are globally unique: `<split>-e<epoch>-s<shard>-c<chunk>`. Tar metadata is fixed
(mtime 0, uid/gid 0, mode 0644), so the same arrays always give byte-identical shards.
`manifest.json` at the data root lists every shard with its sample count and sha256. The root
is a local folder or a URL (`seqtrain.common.storage`).
"""

from __future__ import annotations

import copy
import io
import math
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import numpy as np

from seqtrain.common.errors import UserError
from seqtrain.common.storage import (
    Location,
    StorageError,
    is_remote,
    join,
    locate,
    object_size,
    open_shard,
    read_json,
    sha256_file,
)

DIGIT_SIZE = 28
NUM_SLOTS = 3
IMAGE_SHAPE = (DIGIT_SIZE, DIGIT_SIZE * NUM_SLOTS)
BLANK = 10
NUM_CLASSES = 11
SPLITS = ("train", "val", "test")

FORMAT_NAME = "seqtrain-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
IMAGE_EXT = "img.npy"
LABEL_EXT = "cls.npy"


def sample_key(split: str, epoch: int, shard: int, chunk: int) -> str:
    return f"{split}-e{epoch:03d}-s{shard:05d}-c{chunk:04d}"


def shard_relpath(split: str, epoch: int, shard: int) -> str:
    """Where a shard lives below the data root."""
    return f"{split}/{split}-e{epoch:03d}-s{shard:05d}.tar"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def shard_bytes(
    images: np.ndarray, labels: np.ndarray, split: str, epoch: int, shard: int, chunk_size: int
) -> bytes:
    """Serialise sequences into one deterministic tar shard."""
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must be uint8 [n, 28, 84], got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != (len(images), NUM_SLOTS):
        raise ValueError(f"labels must be uint8 [n, 3], got {labels.dtype} {labels.shape}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for chunk, start in enumerate(range(0, len(images), chunk_size)):
            key = sample_key(split, epoch, shard, chunk)
            _add_member(tar, f"{key}.{IMAGE_EXT}", _npy_bytes(images[start : start + chunk_size]))
            _add_member(tar, f"{key}.{LABEL_EXT}", _npy_bytes(labels[start : start + chunk_size]))
    return buf.getvalue()


def sequence_text(labels: np.ndarray) -> str:
    """The digits of one label row as text, blanks dropped: [4, 7, 10] -> "47"."""
    return "".join(str(int(c)) for c in labels if c != BLANK)


# numpy parses a .npy header with ast.literal_eval, whose recursion bookkeeping CPython 3.11
# shares between threads: parses at the same moment can fail ("AST constructor recursion depth
# mismatch", seen in CI with --stage-on-device's reading threads). Headers are parsed one at a
# time; the arrays are read outside the lock.
_NPY_HEADER_LOCK = threading.Lock()
_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def load_npy(data: bytes) -> np.ndarray:
    """The array in .npy bytes, as `np.load(..., allow_pickle=False)` gives it, safe to call from
    several threads at once; ValueError on damage."""
    stream = io.BytesIO(data)
    with _NPY_HEADER_LOCK:
        version = np.lib.format.read_magic(stream)
        if version not in _NPY_HEADER_READERS:
            raise ValueError(f".npy format version {version} is not supported")
        shape, fortran_order, dtype = _NPY_HEADER_READERS[version](stream)
    if dtype.hasobject:
        raise ValueError(".npy holds Python objects (pickles are not loaded)")
    body = bytearray(memoryview(data)[stream.tell() :])  # writable, as np.load's arrays are
    array = np.frombuffer(body, dtype=dtype, count=math.prod(shape))
    return array.reshape(shape, order="F" if fortran_order else "C")


def iter_shard_chunks(
    source: str | Path | IO[bytes],
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (key, images, labels) per chunk of a shard file or stream, checking shapes;
    raises ValueError on damage."""
    pending: dict[str, dict[str, np.ndarray]] = {}
    # A file is read as is, a stream (remote shard) front to back.
    where = {"name": source} if isinstance(source, str | Path) else {"fileobj": source}
    try:
        with tarfile.open(**where, mode="r:" if "name" in where else "r|") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext not in (IMAGE_EXT, LABEL_EXT) or not member.isfile():
                    raise ValueError(f"unexpected member {member.name!r}")
                data = tar.extractfile(member).read()
                array = load_npy(data)
                parts = pending.setdefault(key, {})
                parts[ext] = array
                if len(parts) == 2:
                    del pending[key]
                    yield (key, *check_chunk(key, parts[IMAGE_EXT], parts[LABEL_EXT]))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"unreadable tar: {e}") from e
    if pending:
        raise ValueError(f"incomplete chunk(s): {sorted(pending)}")


def check_chunk(key: str, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{key}: bad image array {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != (len(images), NUM_SLOTS):
        raise ValueError(f"{key}: bad label array {labels.dtype} {labels.shape}")
    if labels.max(initial=0) > BLANK:
        raise ValueError(f"{key}: label out of range")
    return images, labels


@dataclass(frozen=True)
class ShardInfo:
    path: Location
    split: str
    epoch: int
    count: int
    sha256: str
    cache_dir: Path | None = None
    """Where remote shards are kept once downloaded (None: streamed each time)."""
    cache_max_bytes: int = 0
    """Size cap of `cache_dir`, least recently used shards deleted beyond it (0: none)."""


@dataclass(frozen=True)
class Manifest:
    """The parts of manifest.json the trainer needs, validated."""

    root: Location
    raw: dict
    cache_dir: Path | None = None
    cache_max_bytes: int = 0

    @property
    def config(self) -> dict:
        return self.raw["config"]

    @property
    def length_weights(self) -> tuple[float, ...]:
        """How often sequences of 1, 2, 3 digits were drawn (relative weights)."""
        return tuple(self.config.get("length_weights", (1.0, 1.0, 1.0)))

    def epochs(self, split: str) -> int:
        return int(self.raw["splits"][split]["epochs"])

    def shards(self, split: str, epoch: int = 0) -> list[ShardInfo]:
        return [
            ShardInfo(
                join(self.root, s["path"]),
                split,
                s["epoch"],
                s["count"],
                s["sha256"],
                self.cache_dir,
                self.cache_max_bytes,
            )
            for s in self.raw["splits"][split]["shards"]
            if s["epoch"] == epoch
        ]

    def num_samples(self, split: str, epoch: int = 0) -> int:
        return sum(s.count for s in self.shards(split, epoch))


def shard_problem(shard: ShardInfo, check_sha256: bool = True) -> str | None:
    """Why a shard is bad (missing, sha256 differs, does not decode, wrong count), or None.
    A remote shard is downloaded once, hashed and decoded on the way."""
    if is_remote(shard.path):
        return _remote_shard_problem(shard, check_sha256)
    if not shard.path.is_file():
        return "missing"
    if check_sha256 and sha256_file(shard.path) != shard.sha256:
        return "sha256 differs from the manifest"
    try:
        count = sum(len(labels) for _, _, labels in iter_shard_chunks(shard.path))
    except ValueError as e:
        return f"does not decode: {e}"
    return _count_problem(count, shard)


def _remote_shard_problem(shard: ShardInfo, check_sha256: bool) -> str | None:
    try:
        with open_shard(shard.path, shard.sha256 if check_sha256 else None) as stream:
            count = sum(len(labels) for _, _, labels in iter_shard_chunks(stream))
    except StorageError as e:
        return e.reason
    except ValueError as e:
        return f"does not decode: {e}"
    return _count_problem(count, shard)


def _count_problem(count: int, shard: ShardInfo) -> str | None:
    return None if count == shard.count else f"{count} samples, manifest says {shard.count}"


def _startup_problem(shard: ShardInfo, check_sha256: bool) -> str | None:
    """`shard_problem` for local shards. A remote shard is only looked up (its sha256 is
    checked while it streams): reading the whole set at start would download it twice."""
    if is_remote(shard.path):
        return None if object_size(shard.path) is not None else "missing"
    return shard_problem(shard, check_sha256)


def shard_problems(
    manifest: Manifest, check_sha256: bool, part: int = 0, num_parts: int = 1
) -> dict[str, str]:
    """Decode (and with `check_sha256` hash) every `num_parts`-th listed shard from `part`:
    {path: problem} of the bad ones. Ranks check disjoint parts, so the data is read once.
    Remote shards are only looked up (see `_startup_problem`)."""
    shards = [
        shard
        for split in SPLITS
        for epoch in range(manifest.epochs(split))
        for shard in manifest.shards(split, epoch)
    ]
    problems = {str(s.path): _startup_problem(s, check_sha256) for s in shards[part::num_parts]}
    return {path: problem for path, problem in problems.items() if problem}


def checked_manifest(
    manifest: Manifest, problems: dict[str, str], skip: bool
) -> tuple[Manifest, list[str]]:
    """The first bad shard of `problems` as a UserError naming it, or with `skip` the
    manifest without the bad shards and their descriptions."""
    bad = {path: f"{path}: {problem}" for path, problem in sorted(problems.items())}
    if bad and not skip:
        raise UserError(f"shard {next(iter(bad.values()))} (--skip-corrupt skips it)")
    if not bad:
        return manifest, []
    raw = copy.deepcopy(manifest.raw)
    for split in SPLITS:
        shards = raw["splits"][split]["shards"]
        shards[:] = [s for s in shards if str(join(manifest.root, s["path"])) not in bad]
    return replace(manifest, raw=raw), list(bad.values())


def load_manifest(
    location: str | Path, cache_dir: Path | None = None, cache_max_bytes: int = 0
) -> Manifest:
    """Read and validate `location/manifest.json` (a folder or URL, see
    `seqtrain.common.storage.locate`); every problem is a one-line UserError. `cache_dir` keeps
    downloaded remote shards, at most `cache_max_bytes` of them (0: no cap)."""
    root = locate(location)
    path = join(root, MANIFEST_NAME)
    if not is_remote(root) and not root.is_dir():
        raise UserError(f"shard folder {root} does not exist (generate it with `seqtrain-data`)")
    raw = read_json(path, f"is {root} a seqtrain-data output folder?")
    if raw.get("format") != FORMAT_NAME:
        raise UserError(f"{path} is not a {FORMAT_NAME} manifest")
    if raw.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path} has format version {raw.get('format_version')}, this seqtrain reads "
            f"version {FORMAT_VERSION}: regenerate the shards"
        )
    try:
        for split in SPLITS:
            entry = raw["splits"][split]
            int(entry["epochs"])
            for s in entry["shards"]:
                (s["path"], int(s["epoch"]), int(s["count"]), str(s["sha256"]))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} is malformed ({type(e).__name__}: {e})") from None
    return Manifest(root, raw, cache_dir, cache_max_bytes)
