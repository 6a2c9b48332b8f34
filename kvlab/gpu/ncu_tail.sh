#!/usr/bin/env bash
# Where b1f_kernel's split merge spends its time (issue 18): ncu of one b1f launch per variant at one shape, on a
# kvx site already built in /tmp/kvx-site (b1_run.sh leaves it there). FULL variants get warp-stall samples per
# SASS instruction (SourceCounters), summed by kvlab/gpu/ncu_source.py over the main loop and the tail after it;
# BRIEF variants only the duration and throughput, to compare with the diagnostics.
#   bash kvlab/gpu/ncu_tail.sh $OUT 57,62 52,59 [1x8192]
set -uo pipefail
OUT=${1:?output dir}
FULL=${2:-57}
BRIEF=${3:-}
SHAPE=${4:-1x8192}
NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
REPORT="$OUT/ncu_tail.txt"
echo "# $(nvidia-smi --query-gpu=name --format=csv,noheader), $(date -u +%F' '%H:%M' UTC'), $($NCU_BIN --version | tail -1)" >>"$REPORT"
mkdir -p /tmp/ncu_src
run() {  # variant, sections...
  local v=$1; shift
  echo "## b1f_kernel, KVX_CUDA_VARIANT=$v, shape $SHAPE: ncu --clock-control none -k regex:b1f_kernel -c 1 $*" >>"$REPORT"
  KVX_CUDA_VARIANT=$v timeout 150 "$NCU_BIN" --clock-control none -k regex:b1f_kernel -c 1 "$@" -f -o "/tmp/ncu_src/v$v" \
    python3 -m kvlab.gpu.probe /tmp/kvx-site "$SHAPE" >"/tmp/ncu_src/v$v.log" 2>&1 || tail -5 "/tmp/ncu_src/v$v.log" >>"$REPORT"
  "$NCU_BIN" -i "/tmp/ncu_src/v$v.ncu-rep" --page details >>"$REPORT" 2>&1
}
for v in ${FULL//,/ }; do
  run "$v" --section SpeedOfLight --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
    --section SourceCounters
  "$NCU_BIN" -i "/tmp/ncu_src/v$v.ncu-rep" --page source --csv --print-source sass >"/tmp/ncu_src/v$v.csv" 2>&1
  python3 kvlab/gpu/ncu_source.py "/tmp/ncu_src/v$v.csv" >>"$REPORT" 2>&1
done
for v in ${BRIEF//,/ }; do run "$v" --section SpeedOfLight; done
tar -czf "$OUT/ncu_tail_src.tar.gz" -C /tmp/ncu_src $(cd /tmp/ncu_src && ls ./*.csv 2>/dev/null)
grep -E "^## |Duration|DRAM Throughput|samples|tail|loop|Warp Cycles Per Issued" "$REPORT" | head -60
