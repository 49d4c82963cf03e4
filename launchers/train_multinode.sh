#!/bin/bash
# Multi-node ViD-GPT training under SLURM: environment defaults, then one launch line.
#
#   CONFIG=configs/my_run.toml RUN_DIR=runs/my_run sbatch launchers/train_multinode.sh [--section.key=value ...]
#   sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=8 --partition=gpu launchers/train_multinode.sh
#
# One task per GPU: the defaults below ask for 8 GPUs and 8 tasks per node (override with sbatch flags to
# match your nodes). On CPU-only allocations say so: `sbatch --gpus-per-node=0 --ntasks-per-node=1 ...`.
# A job given GPUs that torch cannot use stops with a message rather than training on the CPUs. Ranks,
# world size and local ranks come from SLURM's variables (each task drives GPU local_rank % visible
# GPUs, so both --gpus-per-task=1 binding and all-GPUs-visible work), the master address from the
# first node. Always --resume auto. When the
# trainer exits 75 (preempted by --signal=USR1 / scancel --signal=USR1, checkpoint saved), the job
# requeues itself and the next run continues from that checkpoint. Cluster-specific network
# variables (NCCL_*, FI_*, EFA/IB) go in $VIDGPT_CLUSTER_ENV (default launchers/cluster_env.sh), sourced
# if present. sbatch flags override the defaults below.
#SBATCH --job-name=vidgpt-train
#SBATCH --nodes=2
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@300
#SBATCH --open-mode=append
#SBATCH --output=vidgpt-train-%j.out

set -uo pipefail
CONFIG="${CONFIG:-configs/demo_cpu.toml}"
RUN_DIR="${RUN_DIR:-runs/${SLURM_JOB_NAME:-vidgpt-train}}"
PYTHON="${PYTHON:-python}"
ENV_FILE="${VIDGPT_CLUSTER_ENV:-launchers/cluster_env.sh}"
[ -f "$ENV_FILE" ] && source "$ENV_FILE"

first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR="${MASTER_ADDR:-$(scontrol show node "$first_node" -o | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)}"
export MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
# SLURM >= 22.05: srun no longer inherits sbatch's --cpus-per-task; pass it on explicitly
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"
if [ -n "${SLURM_GPUS_ON_NODE:-}" ] && [ "${SLURM_GPUS_ON_NODE}" != 0 ] && [ "${DS_ACCELERATOR:-}" != cpu ]; then
  if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "vidgpt: this job has $SLURM_GPUS_ON_NODE GPU(s) per node but $PYTHON's torch cannot use CUDA" \
         "(a CPU-only torch build or a driver problem); install a CUDA build of torch, or set DS_ACCELERATOR=cpu" >&2
    exit 1
  fi
fi
trap 'echo "vidgpt: SIGUSR1 reached the batch shell; the trainer checkpoints and exits 75"' USR1
echo "vidgpt: job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST, master $MASTER_ADDR:$MASTER_PORT"

rm -f "$RUN_DIR/status.json"  # rank 0 writes it before any rank exits: finished | preempted
srun --kill-on-bad-exit=1 "$PYTHON" -m vidgpt.train --config "$CONFIG" --run_dir="$RUN_DIR" --resume auto "$@"
status=$?
state=$(grep -o '"state": "[a-z]*"' "$RUN_DIR/status.json" 2>/dev/null | cut -d'"' -f4)
if [ "$status" -eq 75 ] || [ "$state" = preempted ]; then
  echo "vidgpt: preempted with a checkpoint saved; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
[ "$state" = finished ] && exit 0  # (srun may report a rank stopped by --kill-on-bad-exit after the end)
echo "vidgpt: training failed (srun exit status $status); see the rank errors above" >&2
exit "$status"
