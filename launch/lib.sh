# shellcheck shell=bash
# Shared helpers for the launch scripts (sourced, not run).
# DRY_RUN=1 makes `run` print the exact command, shell-quoted, instead of running it.

run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

# Number of NVIDIA GPUs this process may use (0 without a driver). `nvidia-smi -L` lists every
# installed GPU whatever CUDA_VISIBLE_DEVICES says, so when that is set (empty: none) its
# entries are counted instead, read as CUDA reads them: indices, GPU-/MIG- UUIDs, and the list
# ends at the first invalid entry (e.g. -1, or an index past the installed GPUs).
count_gpus() {
  local installed=0 count=0 entry entries
  if command -v nvidia-smi >/dev/null 2>&1; then
    installed=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  if [ -z "${CUDA_VISIBLE_DEVICES+set}" ] || [ "$installed" -eq 0 ]; then
    echo "$installed"
    return
  fi
  IFS=, read -ra entries <<<"$CUDA_VISIBLE_DEVICES"
  for entry in "${entries[@]}"; do
    case $entry in
      GPU-?* | MIG-?*) ;;
      '' | *[!0-9]*) break ;;
      *) [ "$((10#$entry))" -lt "$installed" ] || break ;;
    esac
    count=$((count + 1))
  done
  echo "$count"
}

# " in CUDA_VISIBLE_DEVICES='...'" when that is set (for error messages), else nothing.
visible_set_note() {
  [ -z "${CUDA_VISIBLE_DEVICES+set}" ] || printf " in CUDA_VISIBLE_DEVICES='%s'" "$CUDA_VISIBLE_DEVICES"
}

# The address of the job's first node, where all ranks meet: SLURM's NodeAddr for it (what its
# daemons use; on most clusters the node's name), else its name.
slurm_first_node_address() {
  local first address
  # sed reads the whole list: `head -n 1` would exit early, and the writer's SIGPIPE fails the
  # pipeline under `set -o pipefail` (exit 141) when the list is long enough.
  first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
  address=$(scontrol -o show node "$first" 2>/dev/null | sed -n 's/.* NodeAddr=\([^ ]*\).*/\1/p')
  echo "${address:-$first}"
}

# Fill the multi-node variables from SLURM's where the user did not set them:
# NUM_MACHINES, MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT, GPUS_PER_NODE.
resolve_nodes() {
  NUM_MACHINES=${NUM_MACHINES:-${SLURM_NNODES:-1}}
  MACHINE_RANK=${MACHINE_RANK:-${SLURM_NODEID:-0}}
  if [ -z "${MAIN_PROCESS_IP:-}" ]; then
    if [ -n "${SLURM_JOB_NODELIST:-}" ]; then
      MAIN_PROCESS_IP=$(slurm_first_node_address)
    else
      MAIN_PROCESS_IP=127.0.0.1
    fi
  fi
  MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-29500}
  # The visible set first: inside a job step SLURM sets CUDA_VISIBLE_DEVICES to the allocation.
  if [ -z "${GPUS_PER_NODE:-}" ]; then
    if [ -n "${CUDA_VISIBLE_DEVICES+set}" ] || [ -z "${SLURM_GPUS_ON_NODE:-}" ]; then
      GPUS_PER_NODE=$(count_gpus)
    else
      GPUS_PER_NODE=$SLURM_GPUS_ON_NODE
    fi
  fi
  [ "$GPUS_PER_NODE" -gt 0 ] 2>/dev/null ||
    die "no GPUs visible$(visible_set_note): set GPUS_PER_NODE (processes per node; on CPU-only nodes too)"
  if ! [ "$MACHINE_RANK" -ge 0 ] 2>/dev/null || [ "$MACHINE_RANK" -ge "$NUM_MACHINES" ]; then
    die "MACHINE_RANK=$MACHINE_RANK is outside [0, NUM_MACHINES=$NUM_MACHINES)"
  fi
}

# Exit status of a run stopped for preemption, saved and resumable (seqtrain.components.preemption).
EXIT_PREEMPTED=75

# Run "$@" (after the signal name $1) in the background and return its exit status, passing a
# SIGTERM, SIGUSR1 or SIGINT that reaches this shell on to it as signal $1 (the first one
# received is kept in STOP_SIGNAL). In the background because bash runs a trap only after a
# foreground child has ended (and a background child ignores SIGINT, hence INT forwarded too).
# To torch's launchers pass TERM: they forward it to every rank. To srun pass USR1: srun
# forwards it to its tasks, but ends the step on TERM.
STOP_SIGNAL=""
run_forwarding_signals() {
  local sig=$1
  shift
  if [ "${DRY_RUN:-0}" = 1 ]; then
    run "$@"
    return
  fi
  # SLURM signals every process of a step (the launcher too, and torch's agent dies of USR1):
  # the child ignores USR1 (which ranks inherit, and seqtrain's handler overrides), and runs in
  # a process group of its own (job control), so signals reach it through the trap.
  set -m
  (
    trap '' USR1
    exec "$@"
  ) &
  set +m
  local child=$! status=0 received pass
  for received in TERM USR1 INT; do
    pass="kill -$sig $child 2>/dev/null || true"
    # Inside a SLURM job a SIGTERM comes from SLURM, which sends it to every process of the job
    # (preemption, scancel, requeue, the time limit): the child has it already, and a second
    # one made torch's agent fail mid-shutdown (a traceback from its logging, ranks orphaned).
    [ "$received" = TERM ] && [ -n "${SLURM_JOB_ID:-}" ] && pass=":"
    # shellcheck disable=SC2064  # the child's pid and the signal's name are meant to be fixed now
    trap "STOP_SIGNAL=\${STOP_SIGNAL:-$received}; $pass" "$received"
  done
  # `wait` returns early (status > 128) when a trapped signal arrives: wait again, then once
  # more for the child's own status (bash keeps it after reaping).
  while kill -0 "$child" 2>/dev/null; do
    wait "$child" || true
  done
  wait "$child" || status=$?
  trap - TERM USR1 INT
  return "$status"
}

# Run a launcher of `seqtrain train` (accelerate launch, torchrun) so that preemption works
# through it: signals are forwarded as SIGTERM (run_forwarding_signals; torch's elastic agent
# forwards SIGTERM to every rank but dies of SIGUSR1), and since the agent itself exits 1 when
# its ranks exit 75, the ranks' mark ($SEQTRAIN_PREEMPTED_FILE) makes this return
# EXIT_PREEMPTED. So does a launcher that failed after a stop signal reached this script: the
# agent stops ranks still starting up (before they could save) with SIGKILL after 30 s and
# exits 1, yet nothing is lost that a resume from the last checkpoint (written atomically)
# does not redo.
launch_trainer() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    run "$@"
    return
  fi
  local mark status=0
  mark=$(mktemp "${TMPDIR:-/tmp}/seqtrain-preempted.XXXXXX")
  SEQTRAIN_PREEMPTED_FILE=$mark run_forwarding_signals TERM "$@" || status=$?
  if [ -s "$mark" ]; then
    status=$EXIT_PREEMPTED
  elif [ "$status" -ne 0 ] && [ -n "$STOP_SIGNAL" ]; then
    echo "seqtrain: the launcher exited $status after SIG$STOP_SIGNAL; the run continues from its last checkpoint" >&2
    status=$EXIT_PREEMPTED
  fi
  rm -f "$mark"
  return "$status"
}

# The job's shape, from SLURM's variables (what sbatch's command line or #SBATCH lines asked for;
# never constants): JOB_NODES; TASKS_PER_NODE: --ntasks-per-node, else --ntasks over the nodes,
# else one per GPU of the node (--gpus-per-node, --gres=gpu:N), else 1; CPUS_PER_TASK:
# --cpus-per-task, else the node's allocated CPUs shared among its tasks.
slurm_layout() {
  local gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-0}} cpus_on_node
  gpus=${gpus##*:} # --gpus-per-node may name a type: a100:8
  JOB_NODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
  if [ -n "${SLURM_NTASKS_PER_NODE:-}" ]; then
    TASKS_PER_NODE=$SLURM_NTASKS_PER_NODE
  elif [ -n "${SLURM_NTASKS:-}" ]; then
    [ "$((SLURM_NTASKS % JOB_NODES))" -eq 0 ] ||
      die "--ntasks $SLURM_NTASKS does not split evenly over $JOB_NODES nodes: use --ntasks-per-node"
    TASKS_PER_NODE=$((SLURM_NTASKS / JOB_NODES))
  elif [ "$gpus" -gt 0 ] 2>/dev/null; then
    TASKS_PER_NODE=$gpus
  else
    TASKS_PER_NODE=1
  fi
  CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-$((${SLURM_CPUS_ON_NODE:-$TASKS_PER_NODE} / TASKS_PER_NODE))}
  cpus_on_node=${SLURM_CPUS_ON_NODE:-$((TASKS_PER_NODE * CPUS_PER_TASK))}
  # sbatch allocates CPUs for the tasks it was asked for (one per node unless told): srun cannot
  # start more on them, and says so in words that do not name the fix.
  if [ "$CPUS_PER_TASK" -lt 1 ] || [ "$((TASKS_PER_NODE * CPUS_PER_TASK))" -gt "$cpus_on_node" ]; then
    die "$TASKS_PER_NODE tasks per node x ${CPUS_PER_TASK} CPUs need more than the $cpus_on_node CPUs allocated on this node: submit with --ntasks-per-node $TASKS_PER_NODE --cpus-per-task C"
  fi
}

# Prepare the node's environment, then check that the command "$@" succeeds there, or stop with
# a one-line error saying how to fix it: SEQTRAIN_SETUP, a shell line evaluated first (e.g.
# "module load cuda/12.4"), then the venv SEQTRAIN_VENV activated. srun passes the resulting
# environment on to every task.
activate_environment() {
  local failure
  # Lmod's and venv's scripts are not written for `set -u`.
  set +u
  if [ -n "${SEQTRAIN_SETUP:-}" ]; then
    eval "$SEQTRAIN_SETUP" || die "SEQTRAIN_SETUP failed: $SEQTRAIN_SETUP"
  fi
  if [ -n "${SEQTRAIN_VENV:-}" ]; then
    [ -f "$SEQTRAIN_VENV/bin/activate" ] || die "SEQTRAIN_VENV=$SEQTRAIN_VENV has no bin/activate"
    # shellcheck disable=SC1091  # the user's venv
    source "$SEQTRAIN_VENV/bin/activate"
  fi
  set -u
  [ "${DRY_RUN:-0}" = 1 ] && return
  failure=$("$@" 2>&1 >/dev/null) ||
    die "\`$*\` failed on ${HOSTNAME:-this node} ($(tail -n 1 <<<"$failure")): set SEQTRAIN_VENV to the venv that has seqtrain, or SEQTRAIN_SETUP to the line that loads it"
}

# The id `scontrol` knows this job by: an array task's own (ARRAYJOB_TASK), else the job's.
slurm_job_id() {
  if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  else
    echo "${SLURM_JOB_ID:-}"
  fi
}

# After a step that saved and stopped (exit 75), inside a batch job: requeue the job, unless
# SLURM is already ending it for good or requeueing it itself. What SLURM shows meanwhile
# (seen on Slurm 22.05):
#   time-limit warning (--signal=B:USR1@T), partition preemption with GraceTime: RUNNING; the
#     job would end FAILED (or COMPLETED) if not requeued here;
#   the time limit itself: COMPLETING with Reason=TimeLimit; it would end TIMEOUT;
#   `scontrol requeue` by an administrator: Restarts already counts it; SLURM starts it again;
#   `scancel`: COMPLETING, then CANCELLED; a requeue here would bring back a cancelled job.
requeue_unless_ending() {
  local job=$1 fields state reason restarts
  fields=$(scontrol -o show job "$job" 2>/dev/null || true)
  state=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$fields")
  reason=$(sed -n 's/.* Reason=\([A-Za-z_]*\).*/\1/p' <<<"$fields")
  restarts=$(sed -n 's/.* Restarts=\([0-9]*\).*/\1/p' <<<"$fields")
  if [ "${restarts:-0}" -gt "${SLURM_RESTART_COUNT:-0}" ]; then
    echo "seqtrain: saved; SLURM requeues job $job itself" >&2
  elif [ -z "$state" ] || [ "$state" = RUNNING ] || [ "$reason" = TimeLimit ]; then
    echo "seqtrain: preempted and saved; requeueing job $job" >&2
    run scontrol requeue "$job"
  else
    echo "seqtrain: saved; job $job was cancelled (JobState=$state), not requeued; submit again with the same run name (default ${SLURM_JOB_NAME:-seqtrain}-$job) to continue" >&2
  fi
}
