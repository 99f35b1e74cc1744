#!/usr/bin/env bash
# Quick start on one CPU machine: install, generate a small data set, verify it, train the best
# small recipe (slotnet_deep, one-cycle LR) and print its test exact match.
#   launch/quickstart.sh [--mnist-dir DIR]     (default: $SEQTRAIN_MNIST_DIR, else download)
# Env: QUICKSTART_OUT (default runs/quickstart; rerunning replaces its run), EPOCHS (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh

out=${QUICKSTART_OUT:-runs/quickstart}
epochs=${EPOCHS:-4}
.venv/bin/seqtrain-data generate "$@" --out "$out/shards" --epochs "$epochs" \
  --train-size 6000 --val-size 1000 --test-size 2000
.venv/bin/seqtrain-data verify "$out/shards"
.venv/bin/seqtrain train --shards "$out/shards" --output-dir "$out" --run-name cpu \
  --epochs "$epochs" --cpu --wandb-mode offline --overwrite \
  --model slotnet_deep --sched onecycle --lr 3e-3
.venv/bin/python - "$out/cpu/test_metrics.json" <<'PY'
import json, sys
test = json.load(open(sys.argv[1]))
print(f"quick start: test exact match {test['exact_match']:.2%} on {test['count']} sequences")
PY
echo "run folder: $out/cpu (config.yaml, metrics.jsonl, test_metrics.json, predictions.png)"
