#!/usr/bin/env bash
# Create a virtualenv (default .venv) and install seqtrain with its test tools.
# Env: PYTHON (interpreter, default python3), VENV (folder, default .venv),
#      TORCH_SPEC (torch/torchvision requirements, default the versions CI uses).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${VENV:-.venv}
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086  # torch_spec is a list of requirements
"$venv/bin/python" -m pip install -q $torch_spec -e ".[dev]"
echo "seqtrain installed in $venv (activate: source $venv/bin/activate)"
