"""Shards and manifests at a URL: object storage (s3://, gs://), HTTP(S), or a local folder.

A data location is either a local folder (a path or a `file://` URL: a `Path`, handled with
plain file calls and atomic renames, exactly as before URLs existed) or a remote URL (a `str`,
handled through fsspec, whose s3fs/gcsfs/HTTP back ends are optional extras). Credentials
and endpoints come from each store's own mechanisms (AWS environment variables, profiles and
`AWS_ENDPOINT_URL` for S3-compatible stores; Google application credentials for gs://).

Reads stream: an object is read front to back, hashed on the way and checked against the
manifest's sha256 when its last byte has passed, so a byte flipped in storage or in transit is
an error naming the URL. A transient failure (connection lost, timeout, server error) reopens
the object at the byte reached after a bounded, doubling wait; a permanent one (no such bucket
or key, access denied, server still gone after the retries) is a `StorageError`: one line
naming the URL. With a cache folder each shard is downloaded once, checked, and read from disk;
with a size cap, the least recently used shards are deleted to make room (see `open_cached`).

Writes are atomic per object: an object store shows an upload only once it is complete (one
PUT), and local files are renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit
from urllib.request import url2pathname

from seqtrain.common.atomic import atomic_write_bytes, atomic_write_json, read_json_object
from seqtrain.common.errors import UserError

T = TypeVar("T")
Location = Path | str
"""A local folder or file (`Path`) or a remote URL (`str`): see `locate`."""

# Remote scheme -> the extra that installs its fsspec back end.
EXTRAS = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}
RETRIES_ENV = "SEQTRAIN_IO_RETRIES"
BACKOFF_ENV = "SEQTRAIN_IO_BACKOFF"
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
_READ_SIZE = 1 << 20
MISSING = "no such object or bucket"
DENIED = "access denied (check the store's credentials)"


class StorageError(UserError):
    """A permanent failure of one object: `url: reason`."""

    def __init__(self, url: str, reason: str, missing: bool = False) -> None:
        super().__init__(url, reason)
        self.url, self.reason, self.missing = url, reason, missing

    def __str__(self) -> str:
        # webdataset appends its stream and URL to an exception's args; the message stays.
        return f"{self.url}: {self.reason}"


def locate(location: str | os.PathLike) -> Location:
    """A `Path` for a local path or `file://` URL, the URL itself (no trailing /) otherwise;
    an unknown scheme is a UserError."""
    text = os.fspath(location)
    if text.startswith("pipe:"):
        raise UserError(
            f"{text}: pipe: commands are not supported (a data set is a manifest beside its "
            "shards, a pipe one stream): give the folder or the store URL"
        )
    if "://" not in text:
        return Path(text)
    parts = urlsplit(text)
    if parts.scheme == "file":
        return Path(url2pathname(parts.path))
    if parts.scheme not in EXTRAS:
        raise UserError(
            f"{text}: unsupported URL scheme {parts.scheme}:// (use a path, file://, s3://, "
            "gs://, http:// or https://)"
        )
    return text.rstrip("/")


def is_remote(location: Location) -> bool:
    return isinstance(location, str)


def join(root: Location, relpath: str) -> Location:
    """`relpath` (with /) below `root`."""
    return root / relpath if isinstance(root, Path) else f"{root}/{relpath}"


def _filesystem(url: str) -> Any:
    """The fsspec filesystem of `url`'s scheme; a missing back end names the extra."""
    scheme = urlsplit(url).scheme
    name = EXTRAS[scheme]
    # seqtrain is not on PyPI: the extra is installed from a clone, a git URL or a wheel.
    extra = f'install seqtrain with its [{name}] extra (pip install ".[{name}]")'
    try:
        import fsspec

        return fsspec.filesystem(scheme)
    except ImportError:
        raise UserError(f"{url} needs the {scheme}:// storage client: {extra}") from None


def _permanent_reason(error: BaseException) -> str | None:
    """Why `error` will not go away by retrying, or None for a transient one."""
    cause = error.__cause__
    if isinstance(error, FileNotFoundError) and cause is not None:
        # fsspec's HTTP back end turns every failed lookup into FileNotFoundError: judge by
        # what happened (a refused connection or a 5xx is transient, a 404 is not).
        status = getattr(cause, "status", None)
        if status in (401, 403):
            return DENIED
        if (isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError)) or (
            status is not None and status != 404
        ):
            return None
    if isinstance(error, FileNotFoundError):
        return MISSING
    status = getattr(error, "status", None)
    if isinstance(error, PermissionError) or status in (401, 403):
        return DENIED
    if isinstance(error, IsADirectoryError):
        return "is a folder, not an object"
    return None


def _retry_settings() -> tuple[int, float]:
    try:
        retries = int(os.environ.get(RETRIES_ENV, DEFAULT_RETRIES))
        backoff = float(os.environ.get(BACKOFF_ENV, DEFAULT_BACKOFF_S))
    except ValueError:
        raise UserError(f"${RETRIES_ENV} must be an integer, ${BACKOFF_ENV} a number") from None
    return max(0, retries), max(0.0, backoff)


class _Retrier:
    """Bounded retries of one object's calls: `retries` waits doubling from `backoff` seconds
    (at most MAX_BACKOFF_S) per run of consecutive failures."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.retries, self.backoff = _retry_settings()
        self.failures = 0

    def failed(self, error: Exception) -> None:
        """Sleep before the next try, or raise the StorageError that ends the tries."""
        reason = _permanent_reason(error)
        if reason is not None:
            raise StorageError(self.url, reason, missing=reason == MISSING) from None
        if self.failures >= self.retries:
            shown = error.__cause__ or error  # fsspec's HTTP errors wrap the real one
            detail = str(shown).splitlines()[0] if str(shown) else type(shown).__name__
            raise StorageError(
                self.url, f"unreachable after {self.failures + 1} tries ({detail})"
            ) from None
        time.sleep(min(self.backoff * 2**self.failures, MAX_BACKOFF_S))
        self.failures += 1

    def succeeded(self) -> None:
        self.failures = 0

    def call(self, fn: Callable[[], T]) -> T:
        while True:
            try:
                result = fn()
            except Exception as e:
                self.failed(e)
            else:
                self.succeeded()
                return result


class _VerifiedReader(io.RawIOBase):
    """A remote object read front to back: reopened where it stopped after a transient error,
    hashed on the way; reaching the end with another sha256 than `sha256` (if given) raises."""

    def __init__(self, url: str, sha256: str | None) -> None:
        super().__init__()
        self.url, self.sha256 = url, sha256
        self._fs = _filesystem(url)
        self._retrier = _Retrier(url)
        self._file: IO[bytes] | None = None
        self._offset = 0
        self._digest = hashlib.sha256()
        self._at_end = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._at_end:
            return 0
        data = self._retrier.call(lambda: self._read(len(buffer)))
        if not data:
            self._at_end = True
            self._check_digest()
            return 0
        buffer[: len(data)] = data
        self._offset += len(data)
        self._digest.update(data)
        return len(data)

    def drain(self) -> None:
        """Read (and hash) what is left, so the sha256 check runs."""
        while self.read(_READ_SIZE):
            pass

    def close(self) -> None:
        self._close_file()
        super().close()

    def _read(self, size: int) -> bytes:
        try:
            if self._file is None:
                self._file = self._open_at(self._offset)
            return self._file.read(size)
        except Exception:
            self._close_file()  # the next try reopens at self._offset
            raise

    def _open_at(self, offset: int) -> IO[bytes]:
        # HTTP: one streaming GET (plain servers ignore ranges); stores: ranged block reads.
        streaming = urlsplit(self.url).scheme in ("http", "https")
        file = self._fs.open(self.url, "rb", **({"block_size": 0} if streaming else {}))
        if offset and not streaming:
            file.seek(offset)
        elif offset:
            _skip(file, offset)
        return file

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None

    def _check_digest(self) -> None:
        if self.sha256 is not None and self._digest.hexdigest() != self.sha256:
            raise StorageError(
                self.url, "sha256 differs from the manifest (damaged in storage or in transit)"
            )


def _skip(file: IO[bytes], count: int) -> None:
    """Read and drop `count` bytes of a stream that cannot seek."""
    while count:
        data = file.read(min(count, _READ_SIZE))
        if not data:
            raise EOFError(f"object ended while skipping to byte {count}")
        count -= len(data)


@contextlib.contextmanager
def open_shard(
    location: Location,
    sha256: str | None,
    cache_dir: Path | None = None,
    cache_max_bytes: int = 0,
) -> Iterator[IO[bytes]]:
    """A shard opened for reading. Local: the file as is (checked at start-up, see
    `shard_problems`). Remote: streamed, or from the cache folder (see `open_cached`); its
    sha256 is checked once the stream is left without an error (the rest is read first if the
    caller stopped early)."""
    if not is_remote(location):
        with open(location, "rb") as f:
            yield f
        return
    if cache_dir is not None:
        with open_cached(location, sha256, cache_dir, cache_max_bytes) as f:
            yield f
        return
    reader = _VerifiedReader(location, sha256)
    with reader, io.BufferedReader(reader, _READ_SIZE) as stream:
        yield stream
        reader.drain()


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_cached(url: str, sha256: str, cache_dir: Path, max_bytes: int = 0) -> IO[bytes]:
    """The local copy of `url` in `cache_dir` (named by its content hash), open for reading:
    downloaded (and checked) when absent or damaged, so a node fetches each shard at most once
    while it stays cached.

    With `max_bytes` (0: no cap), a download that takes the cached shards past it deletes the
    least recently used others (a shard is used when downloaded or read from the cache). Safe
    with several processes sharing the folder: a copy is open before it is checked, and a new
    one before it is renamed into place, and is read through that handle, so another process
    deleting it leaves the read intact; a copy deleted before it is opened is downloaded
    again."""
    path = Path(cache_dir) / f"{sha256}.tar"
    cached = _open_intact(path, sha256)
    if cached is not None:
        return cached
    copy = _download(url, sha256, path)
    if max_bytes:
        _evict_least_recently_used(path.parent, max_bytes, keep=path)
    return copy


def _open_intact(path: Path, sha256: str) -> IO[bytes] | None:
    """`path` open at its start if it holds the bytes of `sha256` (marked used), else None."""
    with contextlib.ExitStack() as on_failure:
        try:
            f = on_failure.enter_context(open(path, "rb"))
            digest = hashlib.sha256()
            while block := f.read(_READ_SIZE):
                digest.update(block)
        except OSError:  # missing (never cached, or deleted by another process), unreadable
            return None
        if digest.hexdigest() != sha256:
            return None
        f.seek(0)
        # The modification time orders eviction; the access time is not kept on many mounts.
        with contextlib.suppress(OSError):  # deleted meanwhile, or another user's file
            os.utime(path)
        on_failure.pop_all()
        return f


def _download(url: str, sha256: str, path: Path) -> IO[bytes]:
    """`url` (checked against `sha256`) written to `path`, returned open at its start."""
    try:
        return _fetch_into(url, sha256, path)
    except OSError as e:
        raise UserError(f"cannot write the cache {path}: {e.strerror or e}") from None


def _fetch_into(url: str, sha256: str, path: Path) -> IO[bytes]:
    # Written under a temporary name and renamed (readers never see a partial copy), through a
    # handle that also reads: the copy is ours before any other process can delete it. Not
    # synced: a copy a power loss damaged fails its hash at the next use and is fetched again.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with contextlib.ExitStack() as on_failure:
        copy = on_failure.enter_context(os.fdopen(fd, "w+b"))
        on_failure.callback(Path(tmp).unlink, missing_ok=True)
        with _VerifiedReader(url, sha256) as reader:
            while data := reader.read(_READ_SIZE):
                copy.write(data)
        copy.flush()
        os.replace(tmp, path)
        on_failure.pop_all()
    copy.seek(0)
    return copy


def _evict_least_recently_used(cache_dir: Path, max_bytes: int, keep: Path) -> None:
    """Delete cached shards, the least recently used (oldest modification time) first, until
    the rest fit under `max_bytes`; never `keep` (the shard being read). Files another process
    deleted first are skipped; downloads in progress (temporary names) are not counted."""
    shards = []
    for path in cache_dir.glob("*.tar"):
        with contextlib.suppress(FileNotFoundError):
            status = path.stat()
            shards.append((status.st_mtime_ns, status.st_size, path))
    total = sum(size for _, size, _ in shards)
    for _, size, path in sorted(shards):
        if total <= max_bytes:
            return
        if path != keep:
            path.unlink(missing_ok=True)
            total -= size


def read_bytes(location: Location) -> bytes:
    """The whole object or file; a missing one raises FileNotFoundError (local) or
    StorageError (remote)."""
    if not is_remote(location):
        return Path(location).read_bytes()
    with _VerifiedReader(location, None) as reader:
        return reader.readall()


def read_if_present(location: Location) -> bytes | None:
    """`read_bytes`, or None when there is no such object or file."""
    try:
        return read_bytes(location)
    except FileNotFoundError:
        return None
    except StorageError as e:
        if e.missing:
            return None
        raise


def read_json(location: Location, missing_hint: str) -> dict:
    """A JSON object; missing, unreadable or not an object is one UserError line."""
    if not is_remote(location):
        return read_json_object(location, missing_hint)
    try:
        data = json.loads(read_bytes(location))
    except StorageError as e:
        raise UserError(f"{e} ({missing_hint})") from None
    except ValueError as e:
        raise UserError(f"{location} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{location} does not hold a JSON object")
    return data


def write_json(location: Location, obj: Any) -> None:
    """`atomic_write_json` to a folder or store."""
    if not is_remote(location):
        atomic_write_json(location, obj)
        return
    write_bytes(location, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_bytes(location: Location, data: bytes) -> None:
    """Put `data` under `location` atomically (a complete object or file, or none)."""
    if not is_remote(location):
        atomic_write_bytes(location, data)
        return
    fs = _filesystem(location)
    _Retrier(location).call(lambda: fs.pipe_file(location, data))


def upload_file(local: Path, url: str) -> None:
    """Upload a finished local file: one PUT, so the object appears only when complete."""
    write_bytes(url, Path(local).read_bytes())


def object_size(location: Location) -> int | None:
    """Size in bytes, or None when there is no such object or file."""
    if not is_remote(location):
        path = Path(location)
        return path.stat().st_size if path.is_file() else None
    fs = _filesystem(location)

    def size() -> int | None:
        try:
            return int(fs.info(location)["size"])
        except FileNotFoundError as e:
            if _permanent_reason(e) == MISSING:
                return None
            raise

    return _Retrier(location).call(size)


def remove(location: Location) -> None:
    """Delete an object or file if present."""
    if not is_remote(location):
        Path(location).unlink(missing_ok=True)
        return
    fs = _filesystem(location)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(location)
