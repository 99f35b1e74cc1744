"""launch/slurm/ on a real one-node SLURM cluster (tests/slurmcluster.py): train.sbatch signalled
mid-epoch saves, requeues itself and resumes to the unbroken run's result; submit_generate.sh's
array job and dependent finalize write the shards a single machine writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import tiny_generate_argv
from slurmcluster import job_fields, missing_reason, sbatch, slurm_cluster
from test_data_gen_runs import shard_bytes_of
from test_faults_train import assert_same_result, epoch_of
from test_preemption import STEPS, preempt_argv, script_env, unbroken_two_ranks  # noqa: F401

from seqtrain.components.checkpoint import META_NAME
from seqtrain.data.format import MANIFEST_NAME

pytestmark = [
    pytest.mark.slow,
    pytest.mark.multiprocess,
    pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


def wait_job(job: str, env: dict[str, str], done, what: str) -> dict[str, str]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not done(fields := job_fields(job, env)):
        assert time.monotonic() < deadline, f"job {job}: no {what} in {JOB_TIMEOUT_S} s: {fields}"
        # afterok on a failed job: SLURM keeps the dependent job pending for ever
        assert fields.get("Reason") != "DependencyNeverSatisfied", f"job {job}: {fields}"
        time.sleep(0.5)
    return fields


@pytest.mark.timeout(900)  # an unbroken 2-rank run, then a job started twice
def test_train_sbatch_preempted_requeues_and_resumes(
    cluster: dict[str, str],
    unbroken_two_ranks: Path,  # noqa: F811  (the fixture imported above, shared with that module)
    tiny_shards: Path,
    tmp_path: Path,
) -> None:
    """Two CPU ranks on a CPU partition; `scancel --signal=USR1 --batch` mid-epoch 2, as SLURM
    does ahead of the time limit (`#SBATCH --signal=B:USR1@300`)."""
    env = {**cluster, **script_env("accelerate")}
    run = tmp_path / "job"
    log = tmp_path / "job.out"
    options = ["--partition", "cpu", "--nodes", "1", "--gpus-per-node", "0",
               "--cpus-per-task", str(os.cpu_count() or 1), "--output", str(log)]  # fmt: skip
    job = sbatch([*options, "launch/slurm/train.sbatch", *preempt_argv(tiny_shards, tmp_path)[4:]],
                 env, REPO)  # fmt: skip

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while epoch_of(run / "checkpoints" / "last") != 1:
        assert time.monotonic() < deadline, job_fields(job, env)
        assert job_fields(job, env).get("JobState") in ("PENDING", "RUNNING"), log.read_text()
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)

    # SLURM holds a requeued job for a while before it may start again: release it now.
    wait_job(job, env, lambda f: f.get("Restarts") == "1" and f.get("JobState") == "PENDING",
             "requeue")  # fmt: skip
    position = json.loads((run / "checkpoints" / "last" / META_NAME).read_text())
    steps_done = sum(segment["steps"] for segment in position["segments"])
    assert position["epoch"] >= 1 and 0 < steps_done < STEPS, position
    assert not (run / "test_metrics.json").exists()
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], env=env, check=True)

    fields = wait_job(job, env, lambda f: f.get("JobState") not in ("PENDING", "RUNNING"), "end")
    output = log.read_text()
    assert fields["JobState"] == "COMPLETED", output[-3000:]
    assert "requeueing job" in output and f"job {job} start 2" in output, output[-3000:]
    assert "resumed from" in output, output[-3000:]
    assert_same_result(unbroken_two_ranks, run)


@pytest.mark.timeout(2 * JOB_TIMEOUT_S)  # wait_job's own failure, with the job's state, first
def test_submit_generate_array_then_finalize(
    cluster: dict[str, str], tiny_shards: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    sbatch_args = f"--partition cpu --cpus-per-task 1 --output {tmp_path}/%x-%A_%a.out"
    env = {**cluster, "NODES": "2", "SEQTRAIN_DATA": str(BIN / "seqtrain-data"),
           "SBATCH_ARGS": sbatch_args}  # fmt: skip
    done = subprocess.run(
        ["bash", "launch/slurm/submit_generate.sh", *tiny_generate_argv(mnist_dir, out)[1:]],
        env=env, cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    finalize = done.stdout.split()[-1]  # "Submitted batch job N"

    def logs() -> str:
        return "".join(p.read_text() for p in sorted(tmp_path.glob("*.out")))

    try:
        fields = wait_job(finalize, env, lambda f: f.get("JobState") not in ("PENDING", "RUNNING"),
                          "end")  # fmt: skip
    except AssertionError as e:
        raise AssertionError(f"{e}\n{logs()[-3000:]}") from None
    assert fields["JobState"] == "COMPLETED", logs()[-3000:]
    assert shard_bytes_of(out) == shard_bytes_of(tiny_shards)
    assert (out / MANIFEST_NAME).read_bytes() == (tiny_shards / MANIFEST_NAME).read_bytes()
