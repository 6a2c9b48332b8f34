#!/usr/bin/env bash
# Issue 18's batch-1 b1f default measured, decided and recorded in ONE device call (device starts are scarce):
# build; oracle on the default and the candidates; the batch-1 sweep (REPS repetitions, SDPA, read floor); the rule
# (kvlab/gpu/b1_pick.py); if it picks a candidate and a rebuild fits the call, run_b1f's default switched to that
# kernel in THIS copy (default.diff; the commit is made from the records, not here) and rebuilt; then run.sh's bench
# (oracle on the default, SDPA table, results.json, ranking), the gpu pytest where the default changed, and ncu of
# the merge tail with the time left.   bash kvlab/gpu/b1_default.sh OUT [seconds, default 570]
set -uo pipefail
OUT=${1:?output dir}
LIMIT=${2:-570}
T0=$(date +%s)
CANDS=${CANDS:-57,61,62}
SRC=kvlab/csrc/src/cuda_b1f.cuh
el() { echo "elapsed $(( $(date +%s) - T0 ))s $(date -u +%T)"; }
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
mkdir -p "$OUT/b1"
KVX_B1F_LOG=1 REPS=${REPS:-3} SWEEP_ARGS=--eager-neighbour timeout $(( LIMIT < 390 ? LIMIT - 30 : 360 )) bash kvlab/gpu/b1_run.sh "$OUT/b1" "$CANDS" \
  0/0,45/0,57/0,61/0,62/0,59/0,63/0,52/0 "${CONTEXTS:-1024,8192,16384,32768}" 1 2>&1 | tee "$OUT/b1/stdout.txt"
el
BUILD_S=$(sed -n 's/^build: \([0-9]*\)s$/\1/p' "$OUT/b1/stdout.txt")
python3 kvlab/gpu/b1_pick.py "$OUT/b1/sweep.txt" "$OUT/b1/oracle.log" --cands "$CANDS" | tee "$OUT/pick.txt"
P=$(sed -n 's/^pick: //p' "$OUT/pick.txt")
READY=1
if [ "${P:-0}" != 0 ]; then
  if [ "$(left)" -gt $(( ${BUILD_S:-300} + ${BENCH_S:-300} )) ]; then
    T=$(sed -n "s/^ *case $P: return \(run_b1f_t<[^>]*>\).*/\1/p" "$SRC")
    cp "$SRC" /tmp/cuda_b1f.orig
    sed -i "s|^    default: return run_b1f_t<4, 6, 0>(a, items, out, lse);|    case 45: return run_b1f_t<4, 6, 0>(a, items, out, lse);\n    default: return $T(a, items, out, lse);  // 0 and $P|" "$SRC"
    diff -u /tmp/cuda_b1f.orig "$SRC" | tee "$OUT/default.diff" && { echo "default: no change made"; P=0; } || READY=
    [ -z "$READY" ] && echo "default: variant $P's kernel $T, rebuilt by run.sh"
  else
    echo "default: variant $P picked, but a rebuild does not fit this call ($(left)s left, build ${BUILD_S}s): unchanged"
  fi
fi
if [ "$(left)" -gt "${BENCH_S:-300}" ]; then
  KVX_SITE_READY=$READY SKIP_PYTEST=1 timeout "$(left)" bash kvlab/gpu/run.sh "$OUT" --variants= --oracle-variants=
else
  echo "run.sh skipped: $(left)s left, under BENCH_S=${BENCH_S:-300}"; READY=1
fi
el
if [ -z "$READY" ] && [ "$(left)" -gt 60 ]; then
  KVX_SITE=/tmp/kvx-site timeout "$(left)" python3 -m pytest -q -m gpu -p no:cacheprovider \
    tests/integration/test_kvext_cuda.py 2>&1 | tee "$OUT/pytest.txt" | tail -3
  el
fi
[ "$(left)" -gt 60 ] && timeout "$(left)" bash kvlab/gpu/ncu_tail.sh "$OUT" "${NCU_FULL:-57,62}" "${NCU_BRIEF:-52,59,61}"
el
