#!/usr/bin/env bash
# Train on all GPUs of this machine with one command:
#   launch/train_node.sh --shards data/shards --run-name my-run [more `seqtrain train` flags]
# Env: NUM_GPUS (default: the GPUs in CUDA_VISIBLE_DEVICES if set, else all), MIXED_PRECISION (default bf16), ACCELERATE (launcher),
#      DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=launch/lib.sh
source "$here/lib.sh"

num_gpus=${NUM_GPUS:-$(count_gpus)}
[ "$num_gpus" -gt 0 ] 2>/dev/null || die "no GPUs visible$(visible_set_note) (set NUM_GPUS, or run 'seqtrain train --cpu')"
config=$here/accelerate/node-8gpu-bf16.yaml
[ "$num_gpus" -eq 1 ] && config=$here/accelerate/gpu-1.yaml

launch_trainer "${ACCELERATE:-accelerate}" launch --config_file "$config" --num_processes "$num_gpus" \
  -m seqtrain train --mixed-precision "${MIXED_PRECISION:-bf16}" "$@"
