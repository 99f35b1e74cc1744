"""The one JSON line every bench command ends with: printed, and saved with --json-out."""

from __future__ import annotations

import contextlib
import json
import platform
from pathlib import Path

from seqtrain.common.atomic import atomic_write_text


def emit_result(record: dict, json_out: Path | None) -> None:
    line = json.dumps(record)
    print(line)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json_out, line + "\n")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what Python's platform module knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()
