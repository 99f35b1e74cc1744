"""The one JSON line every bench command ends with: printed, and saved with --json-out."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from seqtrain.common.atomic import atomic_write_text


def emit_measured(
    name: str, argv: list[str] | None, measure: Callable[[], dict], json_out: Path | None
) -> None:
    """`measure()`'s figures between the command, the machine's facts and its load at the start
    and at the end (the machine is shared), rounded, emitted as `emit_result` does."""
    started = time.perf_counter()
    given = sys.argv[1:] if argv is None else argv
    record = {
        "bench": name,
        "date": datetime.date.today().isoformat(),
        "command": shlex.join(["python", "-m", f"bench.{name}", *given]),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg()[0],
        **measure(),
    }
    record["load_average_at_end"] = os.getloadavg()[0]
    record["seconds"] = time.perf_counter() - started
    emit_result(rounded(record), json_out)


def rounded(value: object) -> object:
    """Floats to 6 decimals, inside lists too."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


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
