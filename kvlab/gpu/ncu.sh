#!/usr/bin/env bash
# Profile the decode kernels with ncu on the GPU machine: bash kvlab/gpu/ncu.sh $OUT
set -uo pipefail
OUT=${1:?output dir}
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
KVX_CUDA=ON KVX_CUDA_ARCH=90 python3 -m pip wheel -q --no-deps --no-build-isolation ./kvlab/csrc -w /tmp/kvx-wheel \
  >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
rm -rf /tmp/kvx-site && python3 -m zipfile -e /tmp/kvx-wheel/kvlab_kvx-*.whl /tmp/kvx-site
NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
M=""
for s in long_scoreboard short_scoreboard barrier math_pipe_throttle mio_throttle wait not_selected selected \
         lg_throttle dispatch_stall no_instruction tex_throttle branch_resolving; do
  M="$M,smsp__warp_issue_stalled_${s}_per_warp_active.pct"
done
timeout 300 "$NCU_BIN" --clock-control none -k regex:"mma_kernel|partial_kernel" -c 2 --section SpeedOfLight \
  --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis --metrics "${M#,}" \
  python3 -m kvlab.gpu.probe /tmp/kvx-site >"$OUT/ncu.txt" 2>&1
grep -E "mma_kernel|partial_kernel|Duration|DRAM Throughput|Compute \(SM\)|Achieved Occupancy|Registers Per|stalled|L1/TEX Hit|Mem Busy|Max Bandwidth" "$OUT/ncu.txt" | head -70
