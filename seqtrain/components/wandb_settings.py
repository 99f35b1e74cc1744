"""Where a run's W&B settings come from: a flag, else W&B's own environment variables, else
seqtrain's default, as W&B's users expect (`export WANDB_MODE=online` works).

A `--wandb-*` flag left out is None ("not given") in the parsed config; `resolved_log_config`
fills it in and the resolved values are what config.yaml saves and W&B logs. A resumed run
(`--resume`, in a run folder whose first start wrote config.yaml) keeps the values that first
start resolved, flags aside: a requeued job whose environment changed (another shell, another
node's profile) must not move the same training to another mode, project or folder halfway.

The run name (the run folder and the W&B name) is `--run-name`, else `WANDB_NAME`, else
`WANDB_RUN_ID` (what `wandb agent` sets for each sweep run: the run gets its own folder, found
again when the agent's run is requeued), else a new `<start time>-<4 hex digits>`. W&B's run id is
`WANDB_RUN_ID` when set (a sweep agent's, which W&B itself enforces under a sweep), else the
run folder's own (`wandb_run.json`); a resume whose `WANDB_RUN_ID` names another run is refused.
Everything here runs on the main process only (its answer is broadcast), since the ranks'
environments may differ.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, MutableMapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from seqtrain.common.cliparse import config_from_dict, config_to_dict
from seqtrain.common.errors import UserError
from seqtrain.components.checkpoint import AUTO
from seqtrain.components.run_paths import RunPaths
from seqtrain.config import LogConfig, RunConfig
from seqtrain.distributed import decided_on_main_process

# LogConfig field -> the variable W&B itself reads for it (wandb/env.py, wandb_settings.py).
ENVIRONMENT = {
    "wandb_mode": "WANDB_MODE",
    "wandb_project": "WANDB_PROJECT",
    "wandb_entity": "WANDB_ENTITY",
    "wandb_dir": "WANDB_DIR",
    "wandb_tags": "WANDB_TAGS",
    "wandb_group": "WANDB_RUN_GROUP",
    "wandb_notes": "WANDB_NOTES",
    "wandb_job_type": "WANDB_JOB_TYPE",
}
# Seqtrain's defaults where neither a flag nor the environment says (others: None, W&B's own).
DEFAULTS: dict[str, Any] = {"wandb_mode": "offline", "wandb_project": "seqtrain", "wandb_tags": []}
# W&B's older names for its modes; `shared` (several writers to one run) is not one seqtrain runs.
MODE_ALIASES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
                "disabled": "disabled"}  # fmt: skip
NAME_ENV = "WANDB_NAME"
RUN_ID_ENV = "WANDB_RUN_ID"
SWEEP_ID_ENV = "WANDB_SWEEP_ID"


def settle_run_settings(cfg: RunConfig) -> Path:
    """Collective: resolve the run name and the W&B settings into `cfg` (decided on the main
    process, the same on every rank) and return the run folder."""
    cfg.train.run_name = decided_on_main_process(partial(resolved_run_name, cfg))
    run_dir = cfg.train.output_dir / cfg.train.run_name
    cfg.log = decided_on_main_process(partial(resolved_log_config, cfg, run_dir))
    return run_dir


def resolved_run_name(cfg: RunConfig, environ: Mapping[str, str] = os.environ) -> str:
    """The run folder's name (and W&B's run name); see the module docstring."""
    for source, name in (("--run-name", cfg.train.run_name), (NAME_ENV, environ.get(NAME_ENV)),
                         (RUN_ID_ENV, environ.get(RUN_ID_ENV))):  # fmt: skip
        if name:
            if "/" in name or name in (".", ".."):
                raise UserError(f"{source} {name!r} cannot name a run folder (a '/' or dots)")
            return name
    if cfg.train.resume == AUTO:
        # A new name would silently start a fresh run instead of continuing one.
        raise UserError("--resume auto needs --run-name: the run folder to continue")
    return f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def resolved_log_config(
    cfg: RunConfig, run_dir: Path, environ: Mapping[str, str] = os.environ
) -> LogConfig:
    """`cfg.log` with every W&B setting decided (see the module docstring); a resume whose
    WANDB_RUN_ID names another W&B run than the run folder's is refused."""
    resuming = cfg.train.resume is not None
    earlier = _earlier_settings(RunPaths(run_dir).config) if resuming else {}
    values = config_to_dict(cfg.log)
    for name, variable in ENVIRONMENT.items():
        if values[name] is not None:
            continue
        if name in earlier:
            values[name] = earlier[name]
        elif environ.get(variable):
            values[name] = _from_environment(name, variable, environ[variable])
        else:
            values[name] = DEFAULTS.get(name)
    if resuming:
        _check_run_id(run_dir, environ.get(RUN_ID_ENV))
    if values["wandb_log_data"] and values["wandb_mode"] != "online":
        raise UserError(
            f"--wandb-log-data needs --wandb-mode online (here {values['wandb_mode']}): W&B "
            "refuses to record a used artifact offline"
        )
    return config_from_dict(LogConfig, values)


def hand_to_wandb(log: LogConfig, environ: MutableMapping[str, str] = os.environ) -> None:
    """Make W&B's own variables say the resolved settings before `wandb.init`: W&B reads them
    where an argument is None, and under a sweep it ignores the project and entity arguments
    for them. Without this a resumed run's pinned settings could still move."""
    for name, variable in ENVIRONMENT.items():
        value = getattr(log, name)
        if value is None or value == ():
            environ.pop(variable, None)
        else:
            environ[variable] = ",".join(value) if name == "wandb_tags" else str(value)


def run_id_from_environment(environ: Mapping[str, str] = os.environ) -> str | None:
    return environ.get(RUN_ID_ENV) or None


def wandb_files_dir(log: LogConfig, run_dir: Path) -> Path:
    """Where W&B writes this run's files: `wandb/` under --wandb-dir, or under the run folder."""
    return RunPaths(log.wandb_dir or run_dir).wandb_dir


def _from_environment(name: str, variable: str, value: str) -> Any:
    if name == "wandb_mode":
        if value not in MODE_ALIASES:
            raise UserError(
                f"{variable}={value} is not a W&B mode seqtrain runs: online, offline, disabled"
            )
        return MODE_ALIASES[value]
    if name == "wandb_tags":  # comma-separated, as W&B reads it
        return [tag.strip() for tag in value.split(",") if tag.strip()]
    return value


def _earlier_settings(config_path: Path) -> dict[str, Any]:
    """The W&B settings the run folder's first start resolved (none before it wrote them)."""
    if not config_path.exists():
        return {}
    try:
        log = (yaml.safe_load(config_path.read_text()) or {}).get("log") or {}
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise UserError(f"cannot read the run's earlier settings {config_path}: {e}") from None
    return {name: value for name, value in log.items() if name in ENVIRONMENT}


def _check_run_id(run_dir: Path, from_environment: str | None) -> None:
    state = RunPaths(run_dir).wandb_run
    recorded = json.loads(state.read_text()).get("id") if state.exists() else None
    if from_environment and recorded and from_environment != recorded:
        raise UserError(
            f"{RUN_ID_ENV}={from_environment} but run folder {run_dir} continues W&B run "
            f"{recorded}: unset {RUN_ID_ENV}, or start a new run with another --run-name"
        )
