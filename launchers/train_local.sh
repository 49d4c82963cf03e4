#!/bin/bash
# One-node training for workstations: torchrun with one process per GPU (or NPROC CPU processes).
#
#   CONFIG=configs/demo_cpu.toml RUN_DIR=runs/local NPROC=2 bash launchers/train_local.sh [--section.key=value ...]
#
# Always --resume auto: running it again continues from the newest checkpoint. Exit status: 0 finished,
# 75 preempted (SIGTERM/SIGUSR1/Ctrl-C: a checkpoint was saved; run it again), else torchrun's.
set -euo pipefail
CONFIG="${CONFIG:-configs/demo_cpu.toml}"
RUN_DIR="${RUN_DIR:-runs/local}"
PYTHON="${PYTHON:-python}"
# GPUs as torch sees them (honours CUDA_VISIBLE_DEVICES; nvidia-smi -L would also count MIG lines)
NPROC="${NPROC:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null)}"
[ "$NPROC" -ge 1 ] 2>/dev/null || NPROC=1
rm -f "$RUN_DIR/status.json"  # rank 0 writes it before any rank exits: finished | preempted
status=0
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
  -m vidgpt.train --config "$CONFIG" --run_dir="$RUN_DIR" --resume auto "$@" || status=$?
# torchrun reports a rank's exit 75 (or a second SIGTERM) as its own failure; status.json decides
state=$(grep -o '"state": "[a-z]*"' "$RUN_DIR/status.json" 2>/dev/null | cut -d'"' -f4 || true)
[ "$state" = preempted ] && exit 75
[ "$state" = finished ] && exit 0
exit "$status"
