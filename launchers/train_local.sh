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
# torchrun runs in a session of its own, so a Ctrl-C (SIGINT to the terminal's process group) reaches this
# shell only, which passes the first stop signal on, once, to the ranks (torchrun's children): they save and
# exit 75. Signalled itself, torchrun would SIGKILL ranks still saving after 30 s, and signalled again while it
# shuts down it dies of its own signal exception, so this script would exit before the ranks finished saving.
# Where setsid is missing (macOS), torchrun shares the terminal's signals.
SETSID=$(command -v setsid || true)
$SETSID "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
  -m vidgpt.train --config "$CONFIG" --run_dir="$RUN_DIR" --resume auto "$@" &
child=$!
stopping=""
stop() {
  if [ -z "$stopping" ]; then
    stopping=1
    echo "vidgpt: $1: the ranks save a checkpoint and exit 75 (kill -9 $child to abandon them)" >&2
    pkill -"$1" -P "$child" 2>/dev/null || kill -s "$1" -- "-$child" 2>/dev/null || true
  fi
}
trap 'stop INT' INT
trap 'stop TERM' TERM
trap 'stop USR1' USR1
status=0
while :; do  # wait returns early when a trapped signal arrives: wait again until torchrun is gone
  wait "$child" && status=0 || status=$?
  kill -0 "$child" 2>/dev/null || break
done
# torchrun reports a rank's exit 75 (or a second SIGTERM) as its own failure; status.json decides
state=$(grep -o '"state": "[a-z]*"' "$RUN_DIR/status.json" 2>/dev/null | cut -d'"' -f4 || true)
[ "$state" = preempted ] && exit 75
[ "$state" = finished ] && exit 0
exit "$status"
