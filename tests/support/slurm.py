"""A real one-node SLURM cluster on this machine, for tests: munged, slurmctld and slurmd run as
root from a temporary folder (slurm.conf there, named by $SLURM_CONF), stopped afterwards.

Needs Debian's `slurm-wlm` and `munge` (`apt-get install -y slurm-wlm munge`) and root."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

from bench.stores import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
GRACE_TIME_S = 60
SLURMD_TIMEOUT_S = 10  # a node silent this long is DOWN and its jobs requeued (default 300)
MUNGE_KEY = Path("/etc/munge/munge.key")
# slurmctld tests time limits (and sends due --signal warnings) every 30 s, a constant compiled
# into it (PERIODIC_TIMEOUT); at debug2 it logs each test, so a test can time a job against it.
TIME_LIMIT_TEST_S = 30
TIME_LIMIT_TEST_LOGGED = re.compile(r"^\[([0-9T:.-]+)\] debug2: Testing job time limits", re.M)


def missing_reason() -> str | None:
    """Why a cluster cannot be started here, or None."""
    absent = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install -y slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the test SLURM cluster runs its daemons as root"
    if not MUNGE_KEY.exists():
        return f"{MUNGE_KEY} missing (reinstall munge)"
    return None


def _node_lines(host: str, cpus: int, names: list[str]) -> str:
    """One node: this machine under its own name. Several: one slurmd each on this machine
    (`slurmd -N NAME`), named n1, n2, ..., each with its own port and a share of the CPUs."""
    if names == [host]:
        return f"NodeName={host} CPUs={cpus} State=UNKNOWN"
    share = max(1, cpus // len(names))
    return "\n".join(
        f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} "
        f"CPUs={share} State=UNKNOWN"
        for name in names
    )


def _slurm_conf(root: Path, host: str, cpus: int, extra: str, names: list[str]) -> str:
    # Two partitions on the node(s): jobs in `urgent` preempt (requeue) those in `cpu`, which
    # get GraceTime seconds of SIGTERM first, as on clusters with a preemptible partition.
    # batch_sched_delay=0: a job submitted within 3 s (the default) of the last scheduling
    # pass, as each test's next job is, starts at once instead of waiting those seconds out.
    nodes = ",".join(names)
    return f"""\
ClusterName=seqtrain-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout={SLURMD_TIMEOUT_S}
KillWait=30
MinJobAge=600
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldDebug=debug2
{extra}
{_node_lines(host, cpus, names)}
PartitionName=cpu Nodes={nodes} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 \
PreemptMode=REQUEUE GraceTime={GRACE_TIME_S}
PartitionName=urgent Nodes={nodes} MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
"""


@dataclass
class SlurmCluster:
    """The running cluster: `env` for sbatch/scontrol (SLURM_CONF set); its node can fail."""

    root: Path
    env: dict[str, str]
    nodes: list[str]
    daemons: list[subprocess.Popen] = field(default_factory=list)

    def start(self, argv: list[str], ready: Callable[[], bool], what: str) -> None:
        log = (self.root / "daemons.log").open("a")
        self.daemons.append(subprocess.Popen(argv, env=self.env, stdout=log,
                                             stderr=subprocess.STDOUT))  # fmt: skip
        _wait_for(ready, what, self.root)

    def start_slurmd(self) -> None:
        """One slurmd per node (all on this machine), until every node is idle."""
        for name in self.nodes:
            (self.root / "spool" / name).mkdir(parents=True, exist_ok=True)
            one_of_several = ["-N", name] if len(self.nodes) > 1 else []
            self.start(["slurmd", "-D", *one_of_several, "-f", self.env["SLURM_CONF"]],
                       lambda: True, "slurmd")  # fmt: skip
        _wait_for(lambda: _nodes_idle(self.env, len(self.nodes)), "slurmd", self.root)

    def fail_node(self) -> None:
        """What a node's power loss does: slurmd, every job step daemon and every process they
        started die at once (SIGKILL), nothing is told."""
        doomed = [p for p in psutil.process_iter(["name"])
                  if p.info["name"] in ("slurmd", "slurmstepd")]  # fmt: skip
        doomed += [child for p in doomed for child in _children(p)]
        for p in doomed:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(doomed, timeout=10)

    def seconds_to_time_limit_test(self) -> float:
        """Seconds until slurmctld's next time-limit test (negative: due now), from its log;
        waits for the first test of a cluster just started."""
        log = self.root / "slurmctld.log"
        _wait_for(lambda: TIME_LIMIT_TEST_LOGGED.search(log.read_text()) is not None,
                  "a time-limit test", self.root, timeout=2 * TIME_LIMIT_TEST_S)  # fmt: skip
        last = TIME_LIMIT_TEST_LOGGED.findall(log.read_text())[-1]
        return datetime.fromisoformat(last).timestamp() + TIME_LIMIT_TEST_S - time.time()

    def stop(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@contextlib.contextmanager
def slurm_cluster(root: Path, extra_conf: str = "", nodes: int = 1) -> Iterator[SlurmCluster]:
    """Start the daemons, stopped afterwards. `extra_conf`: more slurm.conf lines (e.g.
    SlurmctldParameters=preempt_send_user_signal); `nodes` > 1: that many slurmd "nodes" on
    this machine (Debian's Slurm supports several slurmd per host)."""
    host = socket.gethostname().split(".")[0]
    names = [host] if nodes == 1 else [f"n{i}" for i in range(1, nodes + 1)]
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True)
    (root / "plugstack.conf").write_text("")
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, host, os.cpu_count() or 1, extra_conf, names))
    cluster = SlurmCluster(root, {**os.environ, "SLURM_CONF": str(conf)}, names)
    try:
        cluster.start(
            ["munged", "-F", "--force", f"--socket={root}/munge.socket",
             f"--key-file={MUNGE_KEY}", f"--pid-file={root}/munged.pid",
             f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
            lambda: (root / "munge.socket").exists(), "munged",
        )  # fmt: skip
        cluster.start(["slurmctld", "-D", "-i", "-f", str(conf)],
                      lambda: _scontrol_ok(cluster.env), "slurmctld")  # fmt: skip
        cluster.start_slurmd()
        yield cluster
    finally:
        cluster.stop()


def _scontrol_ok(env: dict[str, str]) -> bool:
    return subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True,
                          check=False).stdout.count("UP") > 0  # fmt: skip


def _nodes_idle(env: dict[str, str], count: int) -> bool:
    out = subprocess.run(["sinfo", "-h", "-N", "-p", "cpu", "-o", "%T"], env=env,
                         capture_output=True, text=True, check=False).stdout  # fmt: skip
    return out.split().count("idle") == count


def _wait_for(ready, what: str, root: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            logs = "".join(p.read_text()[-2000:] for p in sorted(root.glob("*.log")))
            raise RuntimeError(f"{what} did not come up within {timeout:.0f} s:\n{logs}")
        time.sleep(0.2)


def job_fields(job: str, env: dict[str, str]) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True,
                         text=True, check=False).stdout  # fmt: skip
    return dict(re.findall(r"(\w+)=(\S*)", out))


def sbatch(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    """Submit; returns the job id."""
    done = subprocess.run(["sbatch", "--parsable", *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip().split(";")[0]
