"""What the tests share: argv builders, run/kill/compare helpers, the SLURM test cluster.

Test modules import from here (tests/ is on sys.path through pytest's `pythonpath`), never from
one another. Fixtures live in the conftest.py files; these are plain functions and constants."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
