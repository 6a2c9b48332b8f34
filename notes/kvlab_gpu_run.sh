#!/usr/bin/env bash
# One device call: build the kvx wheel with CUDA, run the CUDA oracle and the SDPA benchmark, then
# the gpu-marked pytest. Usage (repo root, on the GPU machine): bash notes/kvlab_gpu_run.sh $OUT
set -uo pipefail
OUT=${1:?output dir}
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/card.txt"
t0=$(date +%s)
KVX_CUDA=ON KVX_CUDA_ARCH=90 $PY -m pip wheel -q --no-deps --no-build-isolation ./kvlab/csrc -w /tmp/kvx-wheel \
  >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 ))s"; ls /tmp/kvx-wheel
rm -rf /tmp/kvx-site && $PY -m zipfile -e /tmp/kvx-wheel/kvlab_kvx-*.whl /tmp/kvx-site
$PY notes/kvlab_gpu_bench.py --site /tmp/kvx-site --out "$OUT" "${@:2}" 2>&1 | tee "$OUT/run.log"
if [ -n "${NCU:-}" ]; then  # stall reasons and occupancy of the attention kernel, two shapes
  NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 240 "$NCU_BIN" --clock-control none -k regex:"mma_kernel|wide_kernel|partial_kernel" -c 2 --section SpeedOfLight \
    --section Occupancy --section WarpStateStats --section LaunchStats $PY notes/kvlab_gpu_probe.py /tmp/kvx-site \
    >"$OUT/ncu.txt" 2>&1; grep -E "Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers|Stall|Warp Cycles|Compute \(SM\)" "$OUT/ncu.txt" | head -60
fi
if [ -z "${SKIP_PYTEST:-}" ]; then
  KVX_SITE=/tmp/kvx-site $PY -m pytest -q -m gpu -p no:cacheprovider tests/integration/test_kvext_cuda.py 2>&1 | tail -5
fi
