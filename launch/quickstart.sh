#!/usr/bin/env bash
# Quick start on one CPU machine: install, generate a small data set, verify it, train the
# reference model briefly and evaluate it on the test split.
#   launch/quickstart.sh [--mnist-dir DIR]     (default: $SEQTRAIN_MNIST_DIR, else download)
# Env: QUICKSTART_OUT (default runs/quickstart), EPOCHS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh

out=${QUICKSTART_OUT:-runs/quickstart}
epochs=${EPOCHS:-3}
.venv/bin/seqtrain-data generate "$@" --out "$out/shards" --epochs "$epochs" \
  --train-size 6000 --val-size 1000 --test-size 2000
.venv/bin/seqtrain-data verify "$out/shards"
.venv/bin/seqtrain train --shards "$out/shards" --output-dir "$out" --run-name cpu \
  --epochs "$epochs" --cpu --wandb-mode offline
echo "run folder: $out/cpu (config.yaml, metrics.jsonl, test_metrics.json, predictions.png)"
