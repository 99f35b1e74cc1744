"""`python -m bench.scaling --quick`: the step (whole, half, 2 accumulated micro-batches), the
gradient bytes, DDP's buckets and the gloo all-reduce over 1 and 2 spawned processes, measured
in one run and written as one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seqtrain.models import build_model
from support import REPO


def test_quick_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    command = [sys.executable, "-m", "bench.scaling", "--quick", "--json-out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert json.loads(done.stdout.splitlines()[-1]) == record
    assert record["bench"] == "scaling" and record["model"] == "tiny"
    assert record["command"] == f"python -m bench.scaling --quick --json-out {out}"
    assert record["cores"] >= 1 and record["cpu"] and record["date"]
    tiny = build_model("tiny")
    assert record["grad_bytes"] == sum(p.numel() * 4 for p in tiny.parameters())
    assert sum(record["ddp_bucket_bytes"]) == record["grad_bytes"]
    steps = ("step_full_s", "step_half_s", "step_accumulated_s")
    for key in (*steps, "allreduce_1proc_s", "allreduce_2proc_s"):
        assert record[key] > 0, key
    for ratio in ("step_half_over_full", "accumulated_over_full"):
        low, high = record[f"{ratio}_range"]
        assert 0 < low <= record[ratio] <= high, ratio
    ratio = record["allreduce_2proc_s"] / record["step_full_s"]
    assert record["allreduce_2proc_over_step_full"] == pytest.approx(ratio, rel=0.01)
