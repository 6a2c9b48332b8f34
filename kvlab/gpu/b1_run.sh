#!/usr/bin/env bash
# Batch-1 work on the GPU machine in one call (issue 18, goal 3): build kvx with CUDA, the oracle on the
# default kernels and on the given variants, then a graph-mode sweep at small batch next to SDPA (and,
# with NCU=1, ncu of the default kernel at 8k x 1 and 32k x 1).
#   bash kvlab/gpu/b1_run.sh $OUT "20,21,22" "11/0,0/0,20/16,21/0,22/0,23/0,24/0" [contexts] [batches]
# REPS=n repeats the sweep; REFS= (empty) leaves out the reference reads (copy, sum, read floors).
set -uo pipefail
OUT=${1:?output dir}
ORACLE_VARIANTS=${2:-}
CANDS=${3:-11/0,0/0}
CONTEXTS=${4:-1024,8192,32768}
BATCHES=${5:-1,2}
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
t0=$(date +%s)
# KVX_PREBUILT: a kvx site built elsewhere (CMake install + kvx/__init__.py) that saves the build's device
# time; used only if its CUDA library loads here, else built as usual
if [ -n "${KVX_PREBUILT:-}" ] && python3 -c "import sys; sys.path.insert(0, '$KVX_PREBUILT'); import kvx; kvx.library('cuda')"; then
  rm -rf /tmp/kvx-site && cp -r "$KVX_PREBUILT" /tmp/kvx-site && echo "prebuilt kvx site: $KVX_PREBUILT"
else
  KVX_CUDA=ON KVX_CUDA_ARCH=90 python3 -m pip wheel -q --no-deps --no-build-isolation ./kvlab/csrc -w /tmp/kvx-wheel \
    >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - t0 ))s"
  rm -rf /tmp/kvx-site && python3 -m zipfile -e /tmp/kvx-wheel/kvlab_kvx-*.whl /tmp/kvx-site
fi
python3 - "$OUT" "$ORACLE_VARIANTS" <<'PY' 2>&1 | grep -v "^ *ok \|^case " | tee "$OUT/oracle.log" | tail -12
import sys
from pathlib import Path
from kvlab import ext
ext.load(Path("/tmp/kvx-site"))
from kvlab.gpu.bench import oracle
oracle(Path(sys.argv[1]), tuple(int(v) for v in sys.argv[2].split(",") if v))
PY
for rep in $(seq 1 "${REPS:-1}"); do  # REPS repetitions of the whole sweep, one process each
  echo "# repetition $rep"
  python3 -m kvlab.gpu.sweep --site /tmp/kvx-site --contexts "$CONTEXTS" --batches "$BATCHES" --cands "$CANDS" \
    ${REFS---refs} ${SWEEP_ARGS:-}
done 2>&1 | tee "$OUT/sweep.txt"
if [ -n "${NCU:-}" ]; then
  NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 200 "$NCU_BIN" --clock-control none -k regex:"split1_kernel|mma_kernel|combine" -c 4 --section SpeedOfLight \
    --section Occupancy --section LaunchStats --section WarpStateStats python3 -m kvlab.gpu.probe /tmp/kvx-site 1x8192,1x32768 \
    >"$OUT/ncu.txt" 2>&1
  grep -E "split1_kernel|mma_kernel|combine_kernel|Duration|DRAM Throughput|Registers Per|Warp Cycles Per Issued|Achieved Occ" "$OUT/ncu.txt" | head -40
fi
