#!/bin/bash
# One-node training for workstations: torchrun with one process per GPU (or NPROC CPU processes).
#
#   CONFIG=configs/demo_cpu.toml RUN_DIR=runs/local NPROC=2 bash launchers/train_local.sh [--section.key=value ...]
#
# Always --resume auto: running it again continues from the newest checkpoint.
set -euo pipefail
CONFIG="${CONFIG:-configs/demo_cpu.toml}"
RUN_DIR="${RUN_DIR:-runs/local}"
PYTHON="${PYTHON:-python}"
NPROC="${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
[ "$NPROC" -ge 1 ] 2>/dev/null || NPROC=1
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
  -m vidgpt.train --config "$CONFIG" --run_dir="$RUN_DIR" --resume auto "$@"
