"""Preemption: a real SIGTERM mid-epoch (to a 1-process run, and to the launcher of a 2-process
run under accelerate launch and torchrun) saves `last` at that step and exits 75; `--resume auto`
then ends with the same weights and test metrics as an unbroken run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bench.stores import free_port
from seqtrain.common.stop_signals import STOP_FLAG, stop_signals
from seqtrain.components.checkpoint import META_NAME
from seqtrain.components.preemption import EXIT_PREEMPTED, Decision, PreemptionWatch
from seqtrain.config import PreemptConfig
from support import REPO
from support.distributed import cpu_env
from support.processes import process_tree
from support.training import ENV, assert_same_result, epoch_of, resume_argv, run_to_end

BIN = Path(sys.executable).parent
STEPS = 6  # --steps-per-epoch of resume_argv
EXIT_BOUND_S = 90  # from the signal to the exit: at most K steps, a checkpoint, shutdown


@pytest.fixture
def restored_handlers() -> Iterator[None]:
    """Signal handlers as before, and no Accelerate state left (`poll` creates one)."""
    from accelerate.state import AcceleratorState

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    STOP_FLAG.restore()  # the flag too: a test that left its watch open must not leak it
    assert {sig: signal.getsignal(sig) for sig in saved} == saved
    AcceleratorState._reset_state(reset_partial_state=True)


def test_signal_only_sets_a_flag_acted_on_at_the_next_check(restored_handlers) -> None:
    import torch

    watch = PreemptionWatch(PreemptConfig(preempt_check_every=5), torch.device("cpu")).__enter__()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert watch.signal_name == "SIGUSR1"
    assert watch.poll(step=7) == Decision()  # not a check step: no collective, no action
    assert watch.poll(step=10) == Decision(save=True, stop=True)


def test_checkpoint_clock_saves_without_stopping(restored_handlers) -> None:
    import torch

    watch = PreemptionWatch(PreemptConfig(preempt_check_every=1), torch.device("cpu"))
    assert watch.poll(step=1) == Decision()  # --checkpoint-minutes 0: off
    watch.cfg = PreemptConfig(preempt_check_every=1, checkpoint_minutes=1e-9)
    assert watch.poll(step=2) == Decision(save=True, stop=False)


def test_close_gives_the_signals_back(restored_handlers) -> None:
    import torch

    before = signal.getsignal(signal.SIGTERM)
    watch = PreemptionWatch(PreemptConfig(), torch.device("cpu"))
    assert signal.getsignal(signal.SIGTERM) == before  # nothing handled before the block
    with watch:
        assert signal.getsignal(signal.SIGTERM) != before
        watch.close()
        assert signal.getsignal(signal.SIGTERM) == before
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(RuntimeError), watch:  # a run that fails gives them back too
        raise RuntimeError("failed run")
    assert signal.getsignal(signal.SIGTERM) == before


def test_extra_signal_is_a_setting() -> None:
    assert stop_signals(PreemptConfig().preempt_signal) == [signal.SIGTERM, signal.SIGUSR1]
    assert stop_signals("USR2") == [signal.SIGTERM, signal.SIGUSR2]
    assert stop_signals("none") == [signal.SIGTERM]


# Checks every 2 steps and no --checkpoint-every: only the preemption itself saves mid-epoch.
# Three epochs, so a signal landing after epoch 2's last check still stops mid-epoch 3.
PREEMPT_FLAGS = ["--checkpoint-every", "0", "--preempt-check-every", "2", "--epochs", "3"]


def preempt_argv(shards: Path, out: Path) -> list[str]:
    return [*resume_argv(shards, out), *PREEMPT_FLAGS]


def signal_after_epoch_one(
    proc: subprocess.Popen, run: Path, target: psutil.Process, sig: int = signal.SIGTERM
) -> float:
    """`sig` to `target` once epoch 1's checkpoint exists; returns when it was sent."""
    deadline = time.monotonic() + 200
    while epoch_of(run / "checkpoints" / "last") != 1:
        assert proc.poll() is None, "the run ended before the signal"
        assert time.monotonic() < deadline, "no epoch-1 checkpoint in time"
        time.sleep(0.01)
    target.send_signal(sig)
    return time.monotonic()


def wait_exit(proc: subprocess.Popen, sent: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        for p in process_tree(proc.pid):
            p.kill()
        proc.communicate()
        pytest.fail(f"still running {EXIT_BOUND_S} s after SIGTERM")
    assert time.monotonic() - sent < EXIT_BOUND_S
    return proc.returncode, out


def assert_saved_mid_epoch(run: Path) -> None:
    position = json.loads((run / "checkpoints" / "last" / META_NAME).read_text())
    steps_done = sum(segment["steps"] for segment in position["segments"])
    assert position["epoch"] >= 1 and 0 < steps_done < STEPS, position
    assert not (run / "test_metrics.json").exists()


# The loader as users run it: worker processes (the default --num-workers 2), and in-process.
WITH_WORKERS = ["--num-workers", "2"]


@pytest.fixture(scope="module")
def unbroken_runs(unbroken_run):
    """The unbroken run of `preempt_argv` for a --num-workers value (once per session)."""
    return lambda workers: unbroken_run(*PREEMPT_FLAGS, "--num-workers", workers)


@pytest.fixture(scope="module")
def unbroken_with_workers(unbroken_runs) -> Path:
    return unbroken_runs(WITH_WORKERS[1])


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.parametrize("workers", ["0", "2"])
def test_sigterm_mid_epoch_saves_exits_75_and_resumes_exactly(
    workers: str, unbroken_runs, tiny_shards: Path, tmp_path: Path
) -> None:
    """SIGTERM to the process group, as a terminal, `timeout` or a batch system sends it: with
    loader workers it reaches them too; they ignore it, the rank saves and exits 75."""
    argv = [*preempt_argv(tiny_shards, tmp_path), "--num-workers", workers]
    proc = subprocess.Popen(argv, env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    group = ProcessGroup(proc.pid, psutil.Process(proc.pid), with_workers=workers != "0")
    sent = signal_after_epoch_one(proc, tmp_path / "job", group)
    status, out = wait_exit(proc, sent)
    assert status == EXIT_PREEMPTED, out[-3000:]
    assert "preempted: saved" in out and "Traceback" not in out, out[-3000:]
    assert_saved_mid_epoch(tmp_path / "job")

    assert "resumed from" in run_to_end([*argv, "--resume", "auto"])
    assert_same_result(unbroken_runs(workers), tmp_path / "job")


@pytest.mark.slow
@pytest.mark.faults
def test_sigterm_during_start_up_is_saved_at_the_first_check(
    unbroken_with_workers: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """A cluster's signal a second after a (re)start, while Python still imports torch: before
    the flag it killed the process (exit -15; under SLURM the job ended FAILED)."""
    argv = [*preempt_argv(tiny_shards, tmp_path), *WITH_WORKERS]
    proc = subprocess.Popen(argv, env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    time.sleep(1.0)
    assert not (tmp_path / "job").exists(), "start-up was over before the signal"
    os.killpg(proc.pid, signal.SIGTERM)
    status, out = wait_exit(proc, time.monotonic())
    assert status == EXIT_PREEMPTED, out[-3000:]
    assert "preempted: saved" in out and "at epoch 1, batch 2;" in out, out[-3000:]  # 1st check

    assert "resumed from" in run_to_end([*argv, "--resume", "auto"])
    assert_same_result(unbroken_with_workers, tmp_path / "job")


class ProcessGroup:
    """`send_signal` to a whole process group, as a shell or SLURM's step daemon signals."""

    def __init__(self, pgid: int, leader: psutil.Process, with_workers: bool) -> None:
        self.pgid, self.leader, self.with_workers = pgid, leader, with_workers

    def send_signal(self, sig: int) -> None:
        if self.with_workers:
            assert self.leader.children(), "the signal is meant to reach loader workers too"
        os.killpg(self.pgid, sig)


def script_env(launcher: str) -> dict[str, str]:
    """One machine, two CPU ranks, through launch/train_multinode.sh or torchrun_train.sh."""
    var = "TORCHRUN" if launcher == "torchrun" else "ACCELERATE"
    return cpu_env(**{var: str(BIN / launcher)}, NUM_MACHINES="1", MACHINE_RANK="0",
                   MAIN_PROCESS_IP="127.0.0.1", MAIN_PROCESS_PORT=str(free_port()),
                   GPUS_PER_NODE="2", MIXED_PRECISION="no")  # fmt: skip


SCRIPTS = {"accelerate": "train_multinode.sh", "torchrun": "torchrun_train.sh"}


def script_argv(launcher: str, shards: Path, out: Path) -> list[str]:
    # `python -m seqtrain train` is the script's part; the loader as users run it (workers).
    flags = [*preempt_argv(shards, out)[4:], *WITH_WORKERS]
    return ["bash", str(REPO / "launch" / SCRIPTS[launcher]), *flags]


@pytest.fixture(scope="module")
def unbroken_two_ranks(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unbroken2")
    done = subprocess.run(script_argv("accelerate", tiny_shards, out), env=script_env("accelerate"),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "job"


def launcher_process(script: subprocess.Popen, launcher: str) -> psutil.Process:
    """The launcher the script started (its child running accelerate or torchrun)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in psutil.Process(script.pid).children():
            # By program name: the script's own subshells carry "torchrun" in their command line.
            with contextlib.suppress(psutil.NoSuchProcess):
                if launcher in (Path(part).name for part in child.cmdline()[:2]):
                    return child
        time.sleep(0.05)
    pytest.fail(f"{launcher} did not start")


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.multiprocess
@pytest.mark.timeout(600)  # an unbroken 2-rank run (module fixture), a preempted one, its resume
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_sigterm_to_launcher_of_two_ranks_saves_exits_75_and_resumes_exactly(
    launcher: str, unbroken_two_ranks: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """The launcher forwards SIGTERM to both ranks (torch's elastic agent does, then exits 1,
    and signals each rank's process group: its loader workers too); the launch script turns
    the ranks' mark into 75."""
    argv, env = script_argv(launcher, tiny_shards, tmp_path), script_env(launcher)
    proc = subprocess.Popen(argv, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    target = launcher_process(proc, launcher)
    sent = signal_after_epoch_one(proc, tmp_path / "job", target)
    status, out = wait_exit(proc, sent)
    assert status == EXIT_PREEMPTED, out[-3000:]
    assert_saved_mid_epoch(tmp_path / "job")

    env["MAIN_PROCESS_PORT"] = str(free_port())
    done = subprocess.run([*argv, "--resume", "auto"], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    assert_same_result(unbroken_two_ranks, tmp_path / "job")


# A parent that used W&B: prints the service token its children inherit, keeps the service
# until its stdin closes.
WANDB_PARENT = """
import os, sys, wandb
run = wandb.init(mode="offline", dir=sys.argv[1], project="parent")
print(os.environ["WANDB_SERVICE"], flush=True)
sys.stdin.read()
run.finish()
"""


@pytest.fixture
def shared_wandb_service(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment holding $WANDB_SERVICE: a parent process that used W&B (a notebook, a
    sweep agent, a test runner) shares its service with every child."""
    parent = subprocess.Popen([sys.executable, "-c", WANDB_PARENT, str(tmp_path)],
                              env={**ENV, "WANDB_SILENT": "true"}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        token = parent.stdout.readline().strip()
        assert token, "the parent started no W&B service"
        yield {**ENV, "WANDB_SERVICE": token, "WANDB_SILENT": "true"}
    finally:
        parent.communicate(timeout=60)


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stopped_run_resumes_its_wandb_run_beside_a_parents_service(
    sig: signal.Signals, shared_wandb_service: dict[str, str], tiny_shards: Path, tmp_path: Path
) -> None:
    """A run started with $WANDB_SERVICE set uses a W&B service of its own: the parent's kept
    a killed run's id open, and the resume was refused with "run ID ... is in use"."""
    argv = [*preempt_argv(tiny_shards, tmp_path), "--wandb-mode", "offline"]
    proc = subprocess.Popen(argv, env=shared_wandb_service, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    target = ProcessGroup(proc.pid, psutil.Process(proc.pid), with_workers=False)
    status, out = wait_exit(proc, signal_after_epoch_one(proc, tmp_path / "job", target, sig))
    assert status == (EXIT_PREEMPTED if sig == signal.SIGTERM else -signal.SIGKILL), out[-3000:]
    done = subprocess.run([*argv, "--resume", "auto"], env=shared_wandb_service,
                          capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run_ids = {p.name.rsplit("-", 1)[1] for p in (tmp_path / "job" / "wandb").glob("offline-run-*")}
    assert len(run_ids) == 1
