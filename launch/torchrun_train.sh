#!/usr/bin/env bash
# The same multi-node run with torchrun instead of accelerate's launcher (seqtrain creates its
# Accelerator from torchrun's environment). Start once per node.
#   launch/torchrun_train.sh --shards /shared/shards [more `seqtrain train` flags]
# Env: as launch/train_multinode.sh (NUM_MACHINES, MACHINE_RANK, MAIN_PROCESS_IP, ...), DRY_RUN=1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=launch/lib.sh
source "$here/lib.sh"
resolve_nodes

launch_trainer "${TORCHRUN:-torchrun}" --nnodes "$NUM_MACHINES" --node_rank "$MACHINE_RANK" \
  --nproc_per_node "$GPUS_PER_NODE" --master_addr "$MAIN_PROCESS_IP" \
  --master_port "$MAIN_PROCESS_PORT" \
  -m seqtrain train --mixed-precision "${MIXED_PRECISION:-bf16}" "$@"
