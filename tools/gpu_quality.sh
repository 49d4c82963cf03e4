#!/usr/bin/env bash
# The quality run on one GPU (issue 22's third tier: at most 8 minutes of device time), ending in vidgpt-eval.
#
#   bash tools/gpu_quality.sh [WORK_DIR]      # progress on stderr, one JSON summary on stdout
#
# Runs `vidgpt-demo --quality --device cuda`: 4,096 synthetic videos of the built-in task, the quality
# config (configs/quality_cpu.toml: the demo's recipe, 6,000 steps; QUALITY_STEPS overrides), a planned
# preemption and resume, export, and vidgpt-eval on 16 held-out scenes at 8x the clip against the quality
# tier's goals. Wheels in .whl/ (tools/gpu_wheels.sh: a machine that fetches nothing) are installed first.
# Run tools/gpu_smoke.sh before it on a new machine.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-$(mktemp -d /tmp/vidgpt-gpu-quality.XXXXXX)}"
mkdir -p "$WORK"
PY="${PYTHON:-python}"
log() { echo "gpu_quality: $*" >&2; }

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo '{"gpu_quality": "no CUDA device visible to torch"}'
  exit 1
fi
source tools/gpu_env.sh

STEPS=()
[[ -n "${QUALITY_STEPS:-}" ]] && STEPS=(--steps "$QUALITY_STEPS")
log "vidgpt-demo --quality --device cuda ${STEPS[*]} (log: $WORK/quality.log)"
t0=$SECONDS
"$PY" -m vidgpt.demo --quality --device cuda --run-dir "$WORK/quality" "${STEPS[@]}" >"$WORK/quality.log" 2>&1
RC=$?
SECS=$((SECONDS - t0))
log "exit $RC in $SECS s"
"$PY" - "$WORK" "$RC" "$SECS" <<'EOF'
import json, sys
from pathlib import Path
work, rc, secs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = {"gpu_quality": "ok" if rc == 0 else f"failed (exit {rc}): {work / 'quality.log'}", "seconds": secs}
report = work / "quality" / "eval" / "report.json"
if report.is_file():
    summary = json.loads(report.read_text())["summary"]
    out["model"] = {k: v for k, v in summary["methods"]["model"].items() if k != "meets"}
    out["meets_quality"] = summary["methods"]["model"]["meets"]["quality"]
    out["copy_last"] = {k: summary["methods"]["copy_last"].get(k) for k in ("presence_f1", "psnr_first_clip",
                                                                            "centroid_error_first_clip")}
    out["truth_garbage"] = summary["truth_garbage"]
    out["sheet"] = str(work / "quality" / "eval" / "sheet.png")
print(json.dumps(out))
sys.exit(rc)
EOF
