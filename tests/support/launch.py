"""launch/ scripts under test: run one with a scrubbed environment, or dry-run it and read back
the commands it would start."""

from __future__ import annotations

import os
import shlex
import subprocess

from support import REPO

LAUNCH = REPO / "launch"
# The caller's scheduler and GPU selection must not leak into the scripts under test.
SCRUBBED = ("SLURM_", "CUDA_VISIBLE_DEVICES")


def run_script(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a launch script with `env` over this environment minus SLURM's and CUDA's variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def dry_run(script: str, args: list[str], env: dict[str, str]) -> list[list[str]]:
    """Run a launch script in dry-run mode; return each printed command as argv."""
    result = run_script(script, args, env)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]
