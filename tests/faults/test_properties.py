"""Property-based checks: stitching and label encoding, and `predict` on arbitrary bytes."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from data_gen.splits import DigitPool
from data_gen.stitch import NO_SOURCE, compose
from seqtrain.data.format import BLANK, DIGIT_SIZE, NUM_SLOTS
from seqtrain.models import build_model
from seqtrain.predict import Prediction, predict_files

pytestmark = pytest.mark.faults

POOL_SIZE = 40
# Digit k of the pool is filled with the value k + 1 (never 0) and has MNIST index 7k + 3.
POOL = DigitPool(
    images=np.repeat(np.arange(1, POOL_SIZE + 1, dtype=np.uint8), DIGIT_SIZE * DIGIT_SIZE).reshape(
        POOL_SIZE, DIGIT_SIZE, DIGIT_SIZE
    ),
    labels=(np.arange(POOL_SIZE) * 3 % 10).astype(np.uint8),
    index=np.arange(POOL_SIZE, dtype=np.int64) * 7 + 3,
)

weights = st.tuples(*[st.sampled_from([0.0, 0.5, 1.0, 3.0])] * NUM_SLOTS).filter(any)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 30), length_weights=weights, seed=st.integers(0, 2**32 - 1),
       augment=st.booleans())  # fmt: skip
def test_stitched_slots_labels_and_sources_agree(n, length_weights, seed, augment):
    seqs = compose(POOL, n, length_weights, np.random.default_rng(seed), augment)
    assert seqs.images.shape == (n, DIGIT_SIZE, DIGIT_SIZE * NUM_SLOTS)
    assert seqs.images.dtype == np.uint8 and seqs.labels.dtype == np.uint8
    shown = seqs.labels != BLANK
    assert (shown == (seqs.sources != NO_SOURCE)).all()
    lengths = shown.sum(axis=1)
    assert (shown == (np.arange(NUM_SLOTS) < lengths[:, None])).all(), "digits come first"
    assert all(length_weights[length - 1] > 0 for length in lengths)
    for slot in range(NUM_SLOTS):
        pixels = seqs.images[:, :, slot * DIGIT_SIZE : (slot + 1) * DIGIT_SIZE]
        blank = ~shown[:, slot]
        assert not pixels[blank].any(), "blank slots are zero"
        position = (seqs.sources[~blank, slot] - 3) // 7
        assert (POOL.index[position] == seqs.sources[~blank, slot]).all()
        assert (seqs.labels[~blank, slot] == POOL.labels[position]).all()
        if not augment:
            assert (pixels[~blank] == POOL.images[position]).all()


def _image_bytes(mode: str, size: tuple[int, int], fmt: str, cut: float) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 200).save(buffer, format=fmt)
    data = buffer.getvalue()
    return data[: max(1, int(len(data) * cut))]


files = st.one_of(
    st.binary(max_size=3000),
    st.builds(_image_bytes, st.sampled_from(["L", "RGB", "RGBA", "1"]),
              st.tuples(st.integers(1, 300), st.integers(1, 60)),
              st.sampled_from(["PNG", "BMP", "TIFF"]), st.floats(0.05, 1.0)),
)  # fmt: skip
MODEL = build_model("tiny").eval()


@settings(max_examples=60, deadline=None)
@given(data=files)
def test_predict_on_any_bytes_gives_a_prediction_or_a_reason(data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input.png"
        path.write_bytes(data)
        (result,) = predict_files(MODEL, [str(path)], "auto", 4)
    if isinstance(result, Prediction):
        assert len(result.digits) <= NUM_SLOTS and 0 <= result.confidence <= 1
    else:
        assert result[0] == str(path) and "\n" not in result[1] and result[1]
