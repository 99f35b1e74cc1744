#!/usr/bin/env bash
# Generate shards on NODES machines (array job), then merge their records (dependent job):
#   NODES=8 launch/slurm/submit_generate.sh --out /shared/shards [more `generate` flags]
# Env: NODES (array size, default 4), SBATCH_ARGS (more sbatch options for both jobs, e.g. a
#   CPU-only partition: "--partition cpu --cpus-per-task 8"), SEQTRAIN_SETUP and SEQTRAIN_VENV
#   (as in train.sbatch: applied here, and the jobs inherit the environment sbatch exports),
#   SEQTRAIN_DATA (seqtrain-data), DRY_RUN=1 prints the sbatch commands. See docs/slurm.md.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=launch/lib.sh
source "$here/lib.sh"

out=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[i]}" = --out ] && out=${args[i + 1]:-}
done
[ -n "$out" ] || die "pass --out FOLDER (the shared output folder)"
activate_environment "${SEQTRAIN_DATA:-seqtrain-data}" --help
nodes=${NODES:-4}
read -ra extra <<<"${SBATCH_ARGS:-}"

if [ "${DRY_RUN:-0}" = 1 ]; then
  job=DRYRUN_JOB_ID
  run sbatch --parsable "${extra[@]}" --array "0-$((nodes - 1))" "$here/slurm/generate.sbatch" "$@"
else
  job=$(sbatch --parsable "${extra[@]}" --array "0-$((nodes - 1))" "$here/slurm/generate.sbatch" "$@")
fi
run sbatch "${extra[@]}" --dependency "afterok:$job" --job-name seqtrain-finalize --ntasks 1 \
  --wrap "${SEQTRAIN_DATA:-seqtrain-data} finalize $(printf '%q' "$out")"
