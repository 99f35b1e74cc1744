"""bench.members: a quick run times the stacked step, its vectorized form and the separate
members' steps in one run, and records the machine."""

from __future__ import annotations

import json
from pathlib import Path

from bench.members import main


def test_quick_run_times_stacked_vectorized_and_separate(tmp_path: Path) -> None:
    out = tmp_path / "members.json"
    main(["--quick", "--model", "tiny", "--json-out", str(out)])
    record = json.loads(out.read_text())
    assert (record["bench"], record["members"], record["model"]) == ("members", 2, "tiny")
    for name in ("stacked", "vectorized", "separate"):
        assert record[f"{name}_s"] > 0
    assert record["stacked_over_separate"] > 0 and record["cpu"]
