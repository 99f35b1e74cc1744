"""bench.skip_blank: its batches are sequences as the generator draws them, and a quick run
times both skip-blank paths and records the machine."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

from bench.skip_blank import main, sequences_batch
from seqtrain.data.format import BLANK


def test_batches_hold_one_to_three_digits_with_black_blank_slots() -> None:
    images, labels = sequences_batch(64, seed=3)
    inked = images.unflatten(3, (3, 28)).amax((1, 2, 4)) > 0
    assert torch.equal(inked, labels != BLANK)
    lengths = inked.sum(1)
    assert lengths.min() == 1 and lengths.max() == 3
    assert torch.equal(inked, torch.arange(3) < lengths[:, None])  # left-aligned
    assert not torch.equal(sequences_batch(64, seed=4)[0], images)


def test_quick_run_times_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "skip_blank.json"
    main(["--quick", "--mixed-precision", "no", "--json-out", str(out)])
    record = json.loads(out.read_text())
    assert (record["bench"], record["precision"], record["batch_size"]) == ("skip_blank", "no", 8)
    assert record["cpu"] and record["command"].endswith("--json-out " + str(out))
    for kind, clock in itertools.product(("train", "eval"), ("", "_cpu_time")):
        low, high = record[f"{kind}_static_over_dynamic{clock}_range"]
        assert 0 < low <= record[f"{kind}_static_over_dynamic{clock}"] <= high
