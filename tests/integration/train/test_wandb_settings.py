"""W&B as its users set it up: flag > WANDB_* environment > default, resolved once and kept by a
resume; unique run names; a sweep agent's run id, run folder and config; the data in W&B."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seqtrain.common.cliparse import dump_config, parse_config
from seqtrain.common.errors import UserError
from seqtrain.components.resume_guard import data_fingerprint
from seqtrain.components.tracking import data_artifact, dataset_summary, read_offline_run
from seqtrain.components.wandb_settings import resolved_log_config, resolved_run_name
from seqtrain.config import RunConfig
from seqtrain.data.format import load_manifest
from support import REPO
from support.training import run_in_process, train_argv

# field, its flag's value, its WANDB_* variable and value, the value each resolves to, default.
SETTINGS = [
    ("wandb_mode", "disabled", "WANDB_MODE", "online", "online", "offline"),
    ("wandb_project", "p-flag", "WANDB_PROJECT", "p-env", "p-env", "seqtrain"),
    ("wandb_entity", "e-flag", "WANDB_ENTITY", "e-env", "e-env", None),
    ("wandb_dir", "/flag", "WANDB_DIR", "/env", Path("/env"), None),
    ("wandb_tags", "a", "WANDB_TAGS", "x, y", ("x", "y"), ()),
    ("wandb_group", "g-flag", "WANDB_RUN_GROUP", "g-env", "g-env", None),
    ("wandb_notes", "n-flag", "WANDB_NOTES", "n-env", "n-env", None),
    ("wandb_job_type", "j-flag", "WANDB_JOB_TYPE", "j-env", "j-env", None),
]


def config(*argv: str) -> RunConfig:
    return parse_config(RunConfig, list(argv), "seqtrain train", "")


@pytest.mark.parametrize(("field", "flag", "variable", "value", "from_env", "default"), SETTINGS)
def test_flag_beats_environment_beats_default(
    field: str, flag: str, variable: str, value: str, from_env, default, tmp_path: Path
) -> None:
    option = "--" + field.replace("_", "-")
    assert getattr(resolved_log_config(config(), tmp_path, {}), field) == default
    assert getattr(resolved_log_config(config(), tmp_path, {variable: value}), field) == from_env
    given = resolved_log_config(config(f"{option}={flag}"), tmp_path, {variable: value})
    assert getattr(given, field) == (Path(flag) if field == "wandb_dir" else
                                     (flag,) if field == "wandb_tags" else flag)  # fmt: skip


def test_wandb_s_old_mode_names_are_read_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    assert resolved_log_config(config(), tmp_path, {"WANDB_MODE": "dryrun"}).wandb_mode == "offline"
    with pytest.raises(UserError, match="WANDB_MODE=shared is not a W&B mode seqtrain runs"):
        resolved_log_config(config(), tmp_path, {"WANDB_MODE": "shared"})


def test_a_resume_keeps_its_first_start_s_settings_whatever_the_environment_says(
    tmp_path: Path,
) -> None:
    """A requeued job on a node whose profile exports WANDB_MODE=online and another project
    still logs offline into the same project; a flag given on the resume still wins."""
    first = config("--run-name", "r")
    first.log = resolved_log_config(first, tmp_path, {"WANDB_RUN_GROUP": "seeds"})
    (tmp_path / "config.yaml").write_text(dump_config(first))
    moved = {"WANDB_MODE": "online", "WANDB_PROJECT": "elsewhere", "WANDB_RUN_GROUP": "other"}

    resumed = resolved_log_config(config("--resume", "auto"), tmp_path, moved)
    assert (resumed.wandb_mode, resumed.wandb_project, resumed.wandb_group) == (
        "offline", "seqtrain", "seeds",
    )  # fmt: skip
    flagged = resolved_log_config(config("--resume", "auto", "--wandb-notes=why"), tmp_path, moved)
    assert flagged.wandb_notes == "why" and flagged.wandb_mode == "offline"
    fresh = resolved_log_config(config(), tmp_path, moved)  # no --resume: a new run
    assert fresh.wandb_mode == "online"


def test_run_names_differ_within_one_second_and_resume_auto_needs_one() -> None:
    names = {resolved_run_name(config(), {}) for _ in range(20)}
    assert len(names) == 20
    assert resolved_run_name(config("--run-name", "mine"), {"WANDB_RUN_ID": "abc"}) == "mine"
    assert resolved_run_name(config(), {"WANDB_RUN_ID": "abc"}) == "abc"
    assert resolved_run_name(config(), {"WANDB_NAME": "named", "WANDB_RUN_ID": "abc"}) == "named"
    with pytest.raises(UserError, match="--resume auto needs --run-name"):
        resolved_run_name(config("--resume", "auto"), {})
    with pytest.raises(UserError, match="WANDB_NAME 'a/b' cannot name a run folder"):
        resolved_run_name(config(), {"WANDB_NAME": "a/b"})


def test_a_resume_under_another_wandb_run_id_is_refused(tmp_path: Path) -> None:
    (tmp_path / "wandb_run.json").write_text(json.dumps({"id": "first1", "last_steps": {}}))
    resume = config("--resume", "auto")
    assert resolved_log_config(resume, tmp_path, {"WANDB_RUN_ID": "first1"})
    with pytest.raises(UserError, match=r"WANDB_RUN_ID=other2 but run folder .* continues W&B run"):
        resolved_log_config(resume, tmp_path, {"WANDB_RUN_ID": "other2"})


def test_log_data_needs_online_mode(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--wandb-log-data needs --wandb-mode online"):
        resolved_log_config(config("--wandb-log-data"), tmp_path, {})


def test_the_data_artifact_references_every_shard_and_the_manifest(tiny_shards: Path) -> None:
    manifest = load_manifest(str(tiny_shards))
    dataset = dataset_summary(manifest, data_fingerprint(manifest))
    artifact = data_artifact(manifest, dataset)
    refs = {name: entry.ref for name, entry in artifact.manifest.entries.items()}
    shards = sorted(p.relative_to(tiny_shards).as_posix() for p in tiny_shards.rglob("*.tar"))
    assert sorted(refs) == sorted(["manifest.json", *shards])
    assert refs["manifest.json"] == (tiny_shards / "manifest.json").resolve().as_uri()
    assert artifact.type == "dataset" and artifact.metadata["fingerprint"] == dataset["fingerprint"]


def test_environment_and_flags_reach_wandb_and_config_yaml(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in {"WANDB_PROJECT": "from-env", "WANDB_RUN_GROUP": "env-group",
                            "WANDB_TAGS": "a,b", "WANDB_JOB_TYPE": "train"}.items():  # fmt: skip
        monkeypatch.setenv(variable, value)
    argv = train_argv(tiny_shards, tmp_path, "run", "--epochs", "1", "--steps-per-epoch", "3")
    run_in_process([*argv, "--wandb-group", "seeds", "--wandb-notes", "a note"])

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["log"]
    assert saved["wandb_mode"] == "offline" and saved["wandb_project"] == "from-env"
    assert (saved["wandb_group"], saved["wandb_tags"]) == ("seeds", ["a", "b"])
    back = read_offline_run(tmp_path / "run" / "wandb")
    assert back["run"] | {"entity": ""} == {
        "name": "run", "project": "from-env", "entity": "", "group": "seeds",
        "job_type": "train", "notes": "a note", "tags": ["a", "b"], "sweep_id": "",
    }  # fmt: skip
    manifest = load_manifest(str(tiny_shards))
    assert back["config"]["dataset"] == {
        "fingerprint": data_fingerprint(manifest),
        "location": tiny_shards.resolve().as_uri(),
        "generator": manifest.config,
    }


def agent_run(shards: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """What `wandb agent` runs for `launch/wandb/sweep.yaml`: its ${args} as --key=value flags
    (a sweep parameter is named by its field), `--resume auto`, no run name."""
    argv = train_argv(shards, out, "unused", "--epochs", "1", "--steps-per-epoch", "3")
    argv = argv[: argv.index("--run-name")] + argv[argv.index("--run-name") + 2 :]
    argv = [sys.executable, "-m", "seqtrain", *argv, "--resume", "auto", "--lr=0.02",
            "--sched=onecycle"]  # fmt: skip
    done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_sweep_agent_s_run_gets_its_id_folder_and_config_and_a_requeue_continues_it(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """The agent's environment, simulated: WANDB_SWEEP_ID, WANDB_RUN_ID, the parameter file,
    WANDB_DIR (the agent sets it to its working folder), the project. The requeued run (same
    id, `--resume auto`) in an environment that moved is the same run folder and W&B run."""
    params = tmp_path / "config-agent1.yaml"
    params.write_text(yaml.safe_dump({"lr": {"value": 0.02}, "sched": {"value": "onecycle"}}))
    agent = {"WANDB_SWEEP_ID": "sweep9", "WANDB_RUN_ID": "agent1", "WANDB_MODE": "offline",
             "WANDB_SWEEP_PARAM_PATH": str(params), "WANDB_DIR": str(tmp_path / "agent"),
             "WANDB_PROJECT": "sweeps"}  # fmt: skip
    agent_run(tiny_shards, tmp_path / "runs", agent)
    moved = {**agent, "WANDB_PROJECT": "moved", "WANDB_RUN_GROUP": "moved"}
    agent_run(tiny_shards, tmp_path / "runs", moved)

    run_dir = tmp_path / "runs" / "agent1"
    assert json.loads((run_dir / "wandb_run.json").read_text())["id"] == "agent1"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["run_name"] == "agent1" and saved["optim"]["lr"] == 0.02
    assert saved["log"]["wandb_project"] == "sweeps"
    logs = sorted((tmp_path / "agent" / "wandb").glob("offline-run-*-agent1/run-agent1.wandb"))
    assert len(logs) == 2, "one W&B run, two segments"
    for log in logs:
        back = read_offline_run(log.parent)
        assert back["id"] == "agent1" and back["run"]["sweep_id"] == "sweep9"
        assert (back["run"]["project"], back["run"]["group"]) == ("sweeps", "")
        assert (back["config"]["lr"], back["config"]["sched"]) == (0.02, "onecycle")


@pytest.mark.parametrize("name", ["sweep.yaml", "sweep-accelerate.yaml"])
def test_the_sweep_files_commands_are_seqtrain_command_lines(name: str) -> None:
    """Each parameter, expanded as the agent expands ${args}, is one of seqtrain's flags."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    sweep = yaml.safe_load((REPO / "launch" / "wandb" / name).read_text())
    picked = {key: {"value": spec.get("value", spec.get("values", [spec.get("min")])[0])}
              for key, spec in sweep["parameters"].items()}  # fmt: skip
    command = sweep["command"]
    assert command[-1] == "${args}" and "--resume" in command
    train = command[command.index("train") + 1 : -1]
    cfg = config(*train, *create_sweep_command_args({"args": picked})["args"])
    assert cfg.train.resume == "auto"
    assert cfg.optim.lr == picked["lr"]["value"] and cfg.model.model == picked["model"]["value"]
