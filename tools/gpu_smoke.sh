#!/usr/bin/env bash
# GPU smoke test: everything that only a GPU can show, on one GPU machine, in about ten minutes.
#
#   bash tools/gpu_smoke.sh [WORK_DIR]        # prints progress on stderr and one JSON summary on stdout
#
# 1. pytest -m gpu (no host syncs in forward, NCCL with CPU tensors, attention past the CUDA grid limit,
#    bf16 sampling);
# 2. the demo on the GPU (vidgpt-demo --device cuda, fewer steps);
# 3. a bf16 training run of the `small` flavor with flash attention and torch.compile (random latents);
# 4. its resume from the checkpoint (exactly where it stopped);
# 5. export, and bf16 sampling with the kv-cache;
# 6. vidgpt-bench kvcache on the GPU (the cache's speedup) and vidgpt-bench attention.
# Summary: step time, tokens/s, MFU against the GPU's dense bf16 peak, peak memory, kv-cache speedup and
# the outcome of every stage. Needs a CUDA build of torch (and flash-attn: pip install -e '.[gpu]', else SDPA);
# the wheels in .whl/ (tools/gpu_wheels.sh) are installed first, for a machine that fetches nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-$(mktemp -d /tmp/vidgpt-gpu-smoke.XXXXXX)}"
mkdir -p "$WORK"
PY="${PYTHON:-python}"
STEPS="${SMOKE_STEPS:-30}"
log() { echo "gpu_smoke: $*" >&2; }
declare -A RC
stage() {  # stage NAME CMD...: run, keep its output in WORK/NAME.log, remember its exit status
  local name=$1; shift
  log "$name: $*"
  local t0=$SECONDS
  "$@" >"$WORK/$name.log" 2>&1
  RC[$name]=$?
  log "$name: exit ${RC[$name]} in $((SECONDS - t0)) s (log: $WORK/$name.log)"
}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo '{"gpu_smoke": "no CUDA device visible to torch"}'
  exit 1
fi
source tools/gpu_env.sh

stage pytest_gpu "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
stage demo "$PY" -m vidgpt.demo --device cuda --run-dir "$WORK/demo" --steps "${SMOKE_DEMO_STEPS:-200}"

# a bf16 run of `small` on random 4-channel latents (32 x 32, as SD-VAE latents of 256 px video)
stage data "$PY" -c "
from pathlib import Path
from vidgpt.benchmarks.train import write_dataset
write_dataset(Path('$WORK/latents'), 64, 16, 4, 32)"
PEAK=$("$PY" -c "
import torch
name = torch.cuda.get_device_name().lower()
peaks = {'h200': 989, 'h100': 989, 'a100': 312, 'l40': 181, 'a10': 125, '4090': 165}  # dense bf16 TFLOP/s
print(next((v for k, v in peaks.items() if k in name), 0))")
TRAIN=(--config configs/demo_cpu.toml --run_dir="$WORK/small" --data.path="$WORK/latents" --model.flavor=small
       --model.in_channels=4 --model.text_dim=0 --data.num_frames=16 --data.batch_size=4 --training.precision=bf16
       --training.compile=true --training.peak_tflops="$PEAK" --logging.interval=5 --checkpoint.interval=1000
       --optimizer.lr=1e-4)
stage train "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m vidgpt.train "${TRAIN[@]}" \
  --training.steps=$((STEPS / 2))
stage resume "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m vidgpt.train "${TRAIN[@]}" \
  --training.steps="$STEPS" --resume auto
stage export "$PY" -m vidgpt.export "$WORK/small" "$WORK/small_export" --weights ema
stage sample "$PY" -c "
import torch
from pathlib import Path
from vidgpt.export import exported_diffusion, load_exported
from vidgpt.sampling import generate, sampling_autocast
model, info = load_exported(Path('$WORK/small_export'), 'cuda')
prompt = torch.randn(2, 1, 4, 32, 32, device='cuda')
out = generate(model, exported_diffusion(info), prompt, 24, chunk=4, window=12, steps=10,
               autocast=sampling_autocast('auto', 'cuda'), generator=torch.Generator('cuda').manual_seed(0))
assert out.dtype == torch.float32 and torch.isfinite(out).all(), out.dtype
print('sampled', tuple(out.shape))"
stage bench_kvcache "$PY" -m vidgpt.benchmarks kvcache --dtype bfloat16 --frames 32 --chunk 8 --window 16 --steps 10
stage bench_attention "$PY" -m vidgpt.benchmarks attention

"$PY" - "$WORK" <<PYEOF
import json, sys
from pathlib import Path
import torch
work = Path(sys.argv[1])
rc = {$(for k in "${!RC[@]}"; do printf '"%s": %s, ' "$k" "${RC[$k]}"; done)}
out = {"gpu_smoke": "passed" if not any(rc.values()) else "failed", "device": torch.cuda.get_device_name(),
       "capability": ".".join(map(str, torch.cuda.get_device_capability())), "torch": torch.__version__,
       "exit_codes": rc, "work_dir": str(work)}
try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(work / "small" / "tensorboard")); acc.Reload()
    last = {t.split("/")[1]: acc.Scalars(t)[-1].value for t in acc.Tags()["scalars"]}
    out["train_small_bf16_compile"] = {k: round(last[k], 4) for k in ("step_time", "tokens_per_s", "mfu", "memory_gb", "loss")
                                      if k in last}
except Exception as exc:  # noqa: BLE001 - a summary, whatever failed
    out["train_small_bf16_compile"] = f"unavailable: {exc}"
for name in ("bench_kvcache", "bench_attention"):
    try:
        out[name] = json.loads((work / f"{name}.log").read_text().strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001
        out[name] = f"unavailable: {exc}"
if isinstance(out["bench_kvcache"], dict):
    out["kvcache_speedup"] = out["bench_kvcache"].get("speedup")
demo = (work / "demo.log").read_text(errors="replace") if (work / "demo.log").exists() else ""
out["demo_quality"] = [l.strip() for l in demo.splitlines() if l.strip().startswith(("colour-presence", "garbage", "centroid"))]
out["resumed"] = "resumed from" in (work / "resume.log").read_text(errors="replace") if (work / "resume.log").exists() else False
print(json.dumps(out))
PYEOF
for k in "${!RC[@]}"; do [ "${RC[$k]}" -eq 0 ] || exit 1; done
exit 0
