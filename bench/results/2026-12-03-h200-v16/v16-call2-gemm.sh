#!/usr/bin/env bash
# v16 call 2 (prepared at the end of v15), on branch wip/gemm-wgmma after the TMA probe
# passed in call 1: kiln's own GEMM, its tests, then an A/B against cuBLASLt.
cd "$(dirname "$0")/.."
T0=$SECONDS
left() { echo $((585 - (SECONDS - T0))); }
mkdir -p $OUT/r
STAGES=build BUDGET=120 OUT=$OUT/r/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$OUT/r/check.txt 2>&1
grep -E "built|FAILED|error" $OUT/r/check.txt | head
echo "== LinearWgmma tests ($((SECONDS - T0)) s)"
timeout 120 build-gpu/bin/kiln_backend_tests --gtest_filter='*LinearWgmma*:Shapes/Linear.*' > $OUT/r/tests.txt 2>&1; echo "exit $?"
grep -E "FAILED|PASSED|nmse|did not run" $OUT/r/tests.txt | head -20
echo "== A/B --gemm-wgmma ($((SECONDS - T0)) s)"
SKIP_BUILD=1 FLAG=gemm-wgmma VALUES=0,1 OPS=linear OUT=$OUT/r/ab \
  WORKLOADS='sd15:--arch sd15 --what unet --size 512;sdxl:--arch sdxl --what unet --size 1024' \
  timeout $(( $(left) - 20 )) scripts/gpu-ab.sh 2>&1 | grep -E "graph|2048x1280x1280|8192x320x320|failed" | head -20
echo "== short-KV in auto ($((SECONDS - T0)) s)"
[ $(left) -gt 90 ] && SKIP_BUILD=1 FLAG=flash-short-kv-kernel VALUES=0,1 OPS=attention OUT=$OUT/r/short \
  WORKLOADS='sdxl:--arch sdxl --what unet --size 1024' timeout $(( $(left) - 10 )) scripts/gpu-ab.sh 2>&1 | grep -E "x77|graph|failed"
tar czf $OUT/results.tgz -C $OUT r && rm -rf $OUT/r
echo "== done ($((SECONDS - T0)) s)"
