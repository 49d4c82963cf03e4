#!/bin/bash
# Offline encoding as a SLURM job array plus a merge job: environment defaults, then the launch lines.
#
#   TASKS=16 bash launchers/encode_array.sh INPUT OUTPUT [vidgpt-encode flags ...]
#   TASKS=16 ONLY=3,7 bash launchers/encode_array.sh INPUT OUTPUT [same flags]   # resubmit failed tasks
#
# Submits an array of TASKS workers (task i encodes worker i of the deterministic input split; already
# committed inputs are skipped, so resubmitted tasks finish the dataset without duplicates) and a job
# that merges the per-worker indexes into OUTPUT/index.json once every task has succeeded
# (--dependency=afterok; it is dropped if a task fails: resubmit that task with ONLY=...).
# SBATCH_ARGS adds sbatch flags to both jobs (partition, account, GPUs for --codec sd-vae, ...).
#SBATCH --job-name=vidgpt-encode
#SBATCH --cpus-per-task=4
#SBATCH --time=24:00:00
#SBATCH --output=vidgpt-encode-%A_%a.out

set -euo pipefail
PYTHON="${PYTHON:-python}"
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then  # inside one array task
  exec "$PYTHON" -m data_pipeline.encode "$@" --num-workers-total "$VIDGPT_ENCODE_TASKS" \
    --worker-index "$SLURM_ARRAY_TASK_ID" --no-merge --no-progress
fi
if [ "$#" -lt 2 ]; then
  echo "usage: TASKS=N [ONLY=i,j] bash $0 INPUT OUTPUT [vidgpt-encode flags]" >&2
  exit 2
fi
TASKS="${TASKS:-8}"
ONLY="${ONLY:-0-$((TASKS - 1))}"
# shellcheck disable=SC2086
array=$(sbatch --parsable --array="$ONLY" --export="ALL,VIDGPT_ENCODE_TASKS=$TASKS" ${SBATCH_ARGS:-} "$0" "$@")
# shellcheck disable=SC2086
merge=$(sbatch --parsable --job-name=vidgpt-merge --dependency="afterok:$array" --kill-on-invalid-dep=yes \
  --output="vidgpt-merge-%j.out" ${SBATCH_ARGS:-} --wrap "$PYTHON -m data_pipeline.encode merge-index '$2'")
echo "submitted array job $array (tasks $ONLY of $TASKS) and merge job $merge"
