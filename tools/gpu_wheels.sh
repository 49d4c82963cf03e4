#!/usr/bin/env bash
# Wheels for a GPU machine that fetches nothing: the project's dependencies its image lacks (the device
# image has Python 3.12, torch, einops, tensorboard, pytest, numpy, ...; not PyAV, DeepSpeed, WebDataset,
# pydantic), at the versions installed here, downloaded into the git-ignored .whl/ (about 40 MB).
#
#   bash tools/gpu_wheels.sh            # then carry .whl to the machine; tools/gpu_smoke.sh and
#                                       # tools/gpu_quality.sh install what they find there first
#
# boto3 stays out (S3 is imported lazily and no GPU stage uses it), so the wheels stay within what a device
# call carries (64 MiB with the working tree). PYTHON_VERSION and PLATFORMS override the target.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(av hjson pydantic pydantic-core annotated-types typing-inspection webdataset braceexpand)
PYVER="${PYTHON_VERSION:-3.12}"
read -r -a PLATFORMS <<<"${PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64}"
specs=()
for p in "${PKGS[@]}"; do
  v=$(python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p" 2>/dev/null) || {
    echo "gpu_wheels: $p is not installed here; run tools/setup_cpu.sh first (it pins the versions)" >&2; exit 1; }
  specs+=("$p==$v")
done
mkdir -p .whl
rm -f .whl/*.whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${PLATFORMS[@]/#/--platform=}" -d .whl "${specs[@]}"
# DeepSpeed ships a source distribution only: build its pure-Python wheel here (no ops compiled: DS_BUILD_OPS=0)
ds=$(python3 -c "import importlib.metadata as m; print(m.version('deepspeed'))" 2>/dev/null) || {
  echo "gpu_wheels: deepspeed is not installed here; run tools/setup_cpu.sh first" >&2; exit 1; }
DS_BUILD_OPS=0 python3 -m pip wheel --quiet --no-deps --no-build-isolation -w .whl "deepspeed==$ds"
ls -1 .whl
du -sh .whl
