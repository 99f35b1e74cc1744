#!/usr/bin/env bash
# One node's part of a multi-node run; start it once on every node (srun does, see
# launch/slurm/train.sbatch). All nodes rendezvous at MAIN_PROCESS_IP:MAIN_PROCESS_PORT.
#   launch/train_multinode.sh --shards /shared/shards --run-name big [more `seqtrain train` flags]
# Env (default from SLURM where set): NUM_MACHINES, MACHINE_RANK, MAIN_PROCESS_IP,
#   MAIN_PROCESS_PORT (29500), GPUS_PER_NODE (processes per node), MIXED_PRECISION (bf16),
#   ACCELERATE (launcher), DRY_RUN=1 prints the command.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=launch/lib.sh
source "$here/lib.sh"
resolve_nodes

launch_trainer "${ACCELERATE:-accelerate}" launch --config_file "$here/accelerate/multinode.yaml" \
  --multi_gpu --num_machines "$NUM_MACHINES" --machine_rank "$MACHINE_RANK" \
  --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "$MAIN_PROCESS_PORT" \
  --num_processes "$((NUM_MACHINES * GPUS_PER_NODE))" \
  -m seqtrain train --mixed-precision "${MIXED_PRECISION:-bf16}" "$@"
