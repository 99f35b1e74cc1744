"""Shard content: disjoint splits, exact val/test digits, augmented train, readable tars."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from data_gen.mnist import load_mnist
from data_gen.outdir import read_run_config
from data_gen.plan import plan_jobs
from data_gen.splits import VAL_DIGITS, split_indices
from data_gen.stitch import NO_SOURCE
from data_gen.writer import WriterContext, render
from seqtrain.data.format import (
    BLANK,
    DIGIT_SIZE,
    NUM_SLOTS,
    SPLITS,
    iter_shard_chunks,
    load_manifest,
)


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_mnist(mnist_dir, mnist_dir)


@pytest.fixture(scope="module")
def rendered(tiny_shards: Path, mnist) -> dict:
    """Each planned shard's in-memory rendering (with source indices) and its bytes on disk."""
    cfg = read_run_config(tiny_shards)
    ctx = WriterContext.from_config(cfg, mnist)
    out = {}
    for job in plan_jobs(cfg):
        chunks = list(iter_shard_chunks(tiny_shards / job.relpath))
        disk = (np.concatenate([c[1] for c in chunks]), np.concatenate([c[2] for c in chunks]))
        out[job] = (render(job, ctx), disk)
    return out


def slots(images: np.ndarray) -> np.ndarray:
    """[n, 28, 84] -> [n, 3, 28, 28]."""
    n = len(images)
    return images.reshape(n, DIGIT_SIZE, NUM_SLOTS, DIGIT_SIZE).transpose(0, 2, 1, 3)


def test_splits_are_disjoint_and_cover_mnist_train():
    idx = split_indices(seed=0)
    assert len(idx["val"]) == VAL_DIGITS and len(idx["train"]) == 60000 - VAL_DIGITS
    assert not set(idx["val"]) & set(idx["train"])
    assert len(set(idx["val"]) | set(idx["train"])) == 60000
    assert set(split_indices(seed=1)["val"]) != set(idx["val"])


def test_shards_draw_only_from_their_split(rendered):
    allowed = {**split_indices(seed=0), "test": np.arange(10000)}
    for job, (seqs, _) in rendered.items():
        used = seqs.sources[seqs.sources != NO_SOURCE]
        assert np.isin(used, allowed[job.split]).all(), job


def test_disk_matches_rendering(rendered):
    for job, (seqs, (images, labels)) in rendered.items():
        np.testing.assert_array_equal(images, seqs.images, err_msg=str(job))
        np.testing.assert_array_equal(labels, seqs.labels, err_msg=str(job))
        assert len(labels) == job.count


@pytest.mark.parametrize("split", ["val", "test"])
def test_val_test_slots_are_exact_mnist_digits(rendered, mnist, split):
    images_src = mnist.test_images if split == "test" else mnist.train_images
    labels_src = mnist.test_labels if split == "test" else mnist.train_labels
    for job, (seqs, (images, labels)) in rendered.items():
        if job.split != split:
            continue
        blank = labels == BLANK
        np.testing.assert_array_equal(blank, seqs.sources == NO_SOURCE)
        assert not slots(images)[blank].any()  # empty slots are all zero
        shown = ~blank
        np.testing.assert_array_equal(slots(images)[shown], images_src[seqs.sources[shown]])
        np.testing.assert_array_equal(labels[shown], labels_src[seqs.sources[shown]])
        # digits are left-aligned: length = number of leading non-blank slots
        assert (np.diff(blank.astype(int), axis=1) >= 0).all()


def test_train_digits_are_augmented_but_keep_their_mass(rendered, mnist):
    for job, (seqs, (images, labels)) in rendered.items():
        if job.split != "train":
            continue
        shown = labels != BLANK
        ours = slots(images)[shown].astype(np.float64)
        source = mnist.train_images[seqs.sources[shown]].astype(np.float64)
        assert (ours != source).any(axis=(1, 2)).mean() > 0.9
        mass = ours.sum(axis=(1, 2)) / source.sum(axis=(1, 2))
        assert 0.8 < np.median(mass) < 1.2 and (mass > 0.5).all()
        np.testing.assert_array_equal(labels[shown], mnist.train_labels[seqs.sources[shown]])


def test_train_epochs_differ(rendered):
    by_key = {(j.split, j.epoch, j.shard): seqs for j, (seqs, _) in rendered.items()}
    assert not np.array_equal(by_key["train", 0, 0].images, by_key["train", 1, 0].images)


def test_manifest_lists_every_shard_with_histograms(tiny_shards):
    manifest = load_manifest(tiny_shards)
    raw = json.loads((tiny_shards / "manifest.json").read_text())
    expected = {"train": (2, 600, [100] * 6), "val": (1, 250, [100, 100, 50])}
    expected["test"] = expected["val"]
    for split in SPLITS:
        epochs, per_epoch, counts = expected[split]
        assert manifest.epochs(split) == epochs
        for epoch in range(epochs):
            assert [s.count for s in manifest.shards(split, epoch)] == counts
        entry = raw["splits"][split]
        assert sum(entry["label_histogram"]) == NUM_SLOTS * per_epoch * epochs
        assert sum(entry["length_histogram"]) == per_epoch * epochs
        assert raw["samples_per_epoch"][split] == per_epoch
    assert raw["generator"]["name"] == "seqtrain-data" and len(raw["mnist_md5"]) == 4
    assert raw["config"]["seed"] == 0


def test_stock_webdataset_reads_every_shard(tiny_shards):
    manifest = load_manifest(tiny_shards)
    for split in SPLITS:
        shards = [s for e in range(manifest.epochs(split)) for s in manifest.shards(split, e)]
        urls = [str(s.path) for s in shards]
        samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
        keys = [s["__key__"] for s in samples]
        assert len(set(keys)) == len(keys)
        assert sum(len(s["cls.npy"]) for s in samples) == sum(s.count for s in shards)
        assert all(s["img.npy"].shape[1:] == (28, 84) for s in samples)
