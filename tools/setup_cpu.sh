#!/usr/bin/env bash
# Set up vidgpt on a CPU machine: torch's CPU build first, then the project (editable) with the
# extras the demo and the tests need, constrained so nothing replaces that torch build.
#   bash tools/setup_cpu.sh            # extras: dev,data
#   EXTRAS=dev bash tools/setup_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-dev,data}"
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -c tools/constraints-cpu.txt -e ".[${EXTRAS}]"
python -c "import torch, vidgpt; print(f'vidgpt {vidgpt.__version__} ready (torch {torch.__version__})')"
