# Sourced by tools/gpu_smoke.sh and tools/gpu_quality.sh (needs PY, WORK and a log function): installs the
# wheels of .whl/ (tools/gpu_wheels.sh; the GPU machine fetches nothing) into WORK/site, and puts that and the
# repository on PYTHONPATH, so nothing is installed into the machine's own environment.
if compgen -G ".whl/*.whl" >/dev/null; then
  log "installing the wheels in .whl/ into $WORK/site (log: $WORK/pip.log)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    .whl/*.whl >"$WORK/pip.log" 2>&1 || log "pip failed: $WORK/pip.log"
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
missing=$("$PY" -c "
import importlib.util
print(' '.join(m for m in ('av', 'deepspeed', 'webdataset', 'einops', 'tensorboard') if importlib.util.find_spec(m) is None))")
[[ -z "$missing" ]] || log "missing here: $missing (run tools/gpu_wheels.sh on a machine with network and carry .whl)"
unset DS_ACCELERATOR
