#!/usr/bin/env bash
# One device call: build the kvx wheel with CUDA, then `python -m kvlab.gpu.bench` (oracle on all five
# layouts, SDPA benchmark, VMM and bookkeeping costs, CPU kernels on the same host, the ranking),
# then the gpu-marked pytest. Usage (repo root, on the GPU machine): bash kvlab/gpu/run.sh $OUT [bench args]
# KVX_SITE_READY=1 reuses /tmp/kvx-site from an earlier build in the same call; SKIP_PYTEST=1 leaves out the pytest.
set -uo pipefail
OUT=${1:?output dir}
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
t0=$(date +%s)
if [ -n "${KVX_SITE_READY:-}" ] && [ -f /tmp/kvx-site/kvx/__init__.py ]; then  # built earlier in the same call
  echo "build: skipped, the kvx site b1_run.sh built in /tmp/kvx-site (KVX_SITE_READY)"
else
  KVX_CUDA=ON KVX_CUDA_ARCH=90 $PY -m pip wheel -q --no-deps --no-build-isolation ./kvlab/csrc -w /tmp/kvx-wheel \
    >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - t0 ))s"; ls /tmp/kvx-wheel
  rm -rf /tmp/kvx-site && $PY -m zipfile -e /tmp/kvx-wheel/kvlab_kvx-*.whl /tmp/kvx-site
fi
# the VMM path alone first, in its own process (a fault there cannot take the main run's context down)
KVX_SITE=/tmp/kvx-site timeout 120 $PY -m pytest -q -p no:cacheprovider -m gpu -k vmm_pages \
  tests/integration/test_kvext_cuda.py 2>&1 | tail -3
$PY -m kvlab.gpu.bench --site /tmp/kvx-site --out "$OUT" "${@:2}" 2>&1 | tee "$OUT/run.log"
if [ -n "${NCU:-}" ]; then  # stall reasons and occupancy of the attention kernel, two shapes
  NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 240 "$NCU_BIN" --clock-control none -k regex:"mma_kernel|wide_kernel|partial_kernel" -c 2 --section SpeedOfLight \
    --section Occupancy --section WarpStateStats --section LaunchStats $PY -m kvlab.gpu.probe /tmp/kvx-site \
    >"$OUT/ncu.txt" 2>&1; grep -E "Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers|Stall|Warp Cycles|Compute \(SM\)" "$OUT/ncu.txt" | head -60
fi
if [ -z "${SKIP_PYTEST:-}" ]; then
  KVX_SITE=/tmp/kvx-site $PY -m pytest -q -m gpu -p no:cacheprovider tests/integration/test_kvext_cuda.py 2>&1 | tee "$OUT/pytest.txt" | tail -5
fi
