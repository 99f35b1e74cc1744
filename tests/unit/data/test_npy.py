"""`seqtrain.data.format.load_npy`: the shard payload decoder gives what np.load gives, refuses
pickles and damage, and is safe from several threads (the staged loader reads with eight)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from seqtrain.data.format import load_npy


def npy_bytes(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(3 * 28 * 84, dtype=np.uint8).reshape(3, 28, 84),
        np.array([[1, 10, 10], [3, 4, 10]], dtype=np.uint8),
        np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
        np.zeros((0, 28, 84), dtype=np.uint8),
        np.array(7.5, dtype=np.float32),
    ],
    ids=["images", "labels", "fortran", "empty", "scalar"],
)
def test_load_npy_equals_np_load(array: np.ndarray) -> None:
    data = npy_bytes(array)
    loaded, expected = load_npy(data), np.load(io.BytesIO(data), allow_pickle=False)
    assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
    np.testing.assert_array_equal(loaded, expected)
    assert loaded.flags.writeable


def test_load_npy_refuses_pickles_and_damage() -> None:
    with pytest.raises(ValueError, match="Python objects"):
        load_npy(npy_bytes(np.array([{"a": 1}], dtype=object), allow_pickle=True))
    data = npy_bytes(np.zeros((4, 28, 84), dtype=np.uint8))
    with pytest.raises(ValueError):
        load_npy(data[: len(data) // 2])  # truncated body
    with pytest.raises(ValueError):
        load_npy(b"not an npy file at all")


def test_load_npy_from_many_threads_at_once() -> None:
    arrays = [np.full((2, 28, 84), i, dtype=np.uint8) for i in range(16)]
    payloads = [npy_bytes(a) for a in arrays] * 200

    def decode(data: bytes) -> int:
        return int(load_npy(data)[0, 0, 0])

    with ThreadPoolExecutor(8) as pool:
        values = list(pool.map(decode, payloads))
    assert values == list(range(16)) * 200
