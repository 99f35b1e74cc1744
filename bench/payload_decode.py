"""Payload choice: decode speed of one PNG per sample vs raw uint8 npy chunks, images/s per core.

Usage: .venv/bin/python -m bench.payload_decode --mnist-dir ../shared/mnist
Encodes the same stitched 28x84 sequences both ways in memory, then times decoding only
(what a loader process does per sample). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.emit import emit_result
from data_gen.mnist import load_mnist
from data_gen.splits import digit_pools
from data_gen.stitch import compose


def png_decode_rate(images: np.ndarray) -> float:
    blobs = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    start = time.perf_counter()
    for blob in blobs:
        np.asarray(Image.open(io.BytesIO(blob)))
    return len(blobs) / (time.perf_counter() - start)


def npy_decode_rate(images: np.ndarray, chunk_size: int) -> float:
    blobs = []
    for start in range(0, len(images), chunk_size):
        buf = io.BytesIO()
        np.save(buf, images[start : start + chunk_size])
        blobs.append(buf.getvalue())
    start = time.perf_counter()
    for blob in blobs:
        np.load(io.BytesIO(blob))
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-dir", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--json-out", type=Path, help="also write the JSON line here")
    args = parser.parse_args()

    pool = digit_pools(load_mnist(args.mnist_dir, Path("unused")), seed=0)["train"]
    rng = np.random.default_rng(0)
    images = compose(pool, args.samples, (1.0, 1.0, 1.0), rng, augment=True).images
    png, npy = png_decode_rate(images), npy_decode_rate(images, args.chunk_size)
    print(f"{'payload':<36}{'images/s (1 core)':>18}")
    print(f"{'PNG per sample':<36}{png:>18,.0f}")
    print(f"{f'raw npy, {args.chunk_size} per tar member':<36}{npy:>18,.0f}")
    emit_result(
        {"png_per_s": round(png), "npy_per_s": round(npy), "ratio": round(npy / png)}, args.json_out
    )


if __name__ == "__main__":
    main()
