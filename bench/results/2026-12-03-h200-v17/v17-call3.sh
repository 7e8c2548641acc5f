#!/usr/bin/env bash
# v17 call 3: call 2 again after the epilogue's fix (biases loaded before any store), with
# the LinearGeglu suite in the test stage (call 2's missed it), then
# --geglu-fused 0,1 on both UNets. Carry .deps/cudnn-frontend-1.32.0 and .cutlass (the wheel; the tree and all of .deps
# pass the 64 MiB a call carries).
cd "$(dirname "$0")/../../.."
scripts/fetch-cutlass.sh   # headers from the carried wheel in .cutlass/
T0=$SECONDS
left() { echo $((570 - (SECONDS - T0))); }
mkdir -p $OUT/r
STAGES=build,test BUDGET=420 OUT=$OUT/r/check PACK_LOGS=1 COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$OUT/r/check.txt 2>&1
grep -vE "^  -- " $OUT/r/check.txt | grep -E "CUTLASS|built|passed|failed|FAILED|Failure|backend ops|goldens|\+[0-9]+s\]" | head -30
tar xzf $OUT/r/check/logs.tgz -C /tmp 2>/dev/null
grep -hE "LinearGeglu|linear_geglu|Geglu|cut short|no time|exit" /tmp/logs/backend-ops.log $OUT/r/check/logs/backend-ops.log 2>/dev/null | grep -E "OK|FAILED|Failure|nmse" | head -20
echo "== --geglu-fused 0,1 ($((SECONDS - T0)) s)"
SKIP_BUILD=1 FLAG=geglu-fused VALUES=0,1 OPS='geglu|linear [0-9]+x(10240|5120|2560)x' OUT=$OUT/r/ab \
  WORKLOADS='sd15:--arch sd15 --what unet --size 512;sdxl:--arch sdxl --what unet --size 1024' \
  timeout $(( $(left) - 10 )) scripts/gpu-ab.sh 2>&1 | tail -40
tar czf $OUT/results.tgz -C $OUT r && rm -rf $OUT/r
echo "== done ($((SECONDS - T0)) s)"
