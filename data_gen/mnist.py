"""Find, verify and parse the four MNIST IDX files: local folder, env var or download."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqtrain.common.errors import UserError

ENV_VAR = "SEQTRAIN_MNIST_DIR"

# MD5 of each *decompressed* original file: the .gz archives may be recompressed, the content not.
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

_HINT = f"pass --mnist-dir DIR or set {ENV_VAR}=DIR (a folder with the 4 MNIST IDX files)"


@dataclass(frozen=True)
class Mnist:
    train_images: np.ndarray  # uint8 [60000, 28, 28]
    train_labels: np.ndarray  # uint8 [60000]
    test_images: np.ndarray  # uint8 [10000, 28, 28]
    test_labels: np.ndarray  # uint8 [10000]
    md5: dict[str, str]


def load_mnist(mnist_dir: Path | None, download_dir: Path) -> Mnist:
    """--mnist-dir, else $SEQTRAIN_MNIST_DIR, else a (cached) torchvision download."""
    if mnist_dir is None and os.environ.get(ENV_VAR):
        mnist_dir = Path(os.environ[ENV_VAR])
    if mnist_dir is not None:
        files = _find_files(mnist_dir.expanduser())
        if files is None:
            raise UserError(f"no MNIST IDX files in {mnist_dir} (expected {', '.join(MD5)})")
    else:
        files = _find_files(download_dir.expanduser()) or _download(download_dir.expanduser())
    raw = {name: _read_verified(path, name) for name, path in files.items()}
    return Mnist(
        train_images=_parse_idx(raw["train-images-idx3-ubyte"]),
        train_labels=_parse_idx(raw["train-labels-idx1-ubyte"]),
        test_images=_parse_idx(raw["t10k-images-idx3-ubyte"]),
        test_labels=_parse_idx(raw["t10k-labels-idx1-ubyte"]),
        md5=dict(MD5),
    )


def _find_files(folder: Path) -> dict[str, Path] | None:
    """The 4 files (plain or .gz) in `folder` or torchvision's `folder/MNIST/raw`, else None."""
    for candidate in (folder, folder / "MNIST" / "raw", folder / "raw"):
        found = {}
        for name in MD5:
            for path in (candidate / name, candidate / f"{name}.gz"):
                if path.is_file():
                    found[name] = path
                    break
        if len(found) == len(MD5):
            return found
    return None


def _download(root: Path) -> dict[str, Path]:
    """Download as torchvision does; its mirror chatter is swallowed, a failure is one line."""
    from torchvision.datasets import MNIST

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            MNIST(str(root), train=True, download=True)
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError when offline
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"no local MNIST and the download failed ({reason}): {_HINT}") from None
    files = _find_files(root)
    if files is None:
        raise UserError(f"MNIST download into {root} left no IDX files: {_HINT}")
    return files


def _read_verified(path: Path, name: str) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read MNIST file {path}: {e} (truncated or corrupt?)") from None
    digest = hashlib.md5(data).hexdigest()
    if digest != MD5[name]:
        raise UserError(
            f"MNIST file {path} has MD5 {digest} after decompression, expected {MD5[name]} "
            "(truncated or not the original file)"
        )
    return data


def _parse_idx(data: bytes) -> np.ndarray:
    """IDX: 2 zero bytes, dtype code 0x08 (uint8), ndim, big-endian uint32 dims, then the data."""
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
