#!/usr/bin/env bash
# v16 call 7, on wip/gemm-wgmma: two blocks a multiprocessor (3 stages each, no clusters)
# against one, and cuBLASLt in the same run.
cd "$(dirname "$0")/.."
T0=$SECONDS
mkdir -p $OUT/r
STAGES=build BUDGET=120 OUT=$OUT/r/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$OUT/r/check.txt 2>&1
grep -E "built|FAILED|error" $OUT/r/check.txt | head
echo "== LinearWgmma tests ($((SECONDS - T0)) s)"
timeout 60 build-gpu/bin/kiln_backend_tests --gtest_filter='*LinearWgmma*' > $OUT/r/tests.txt 2>&1; echo "exit $?"
grep -E "FAILED|PASSED|nmse|did not run|rror" $OUT/r/tests.txt | head -12
echo "== A/B --gemm-wgmma-blocks ($((SECONDS - T0)) s)"
SKIP_BUILD=1 FLAG=gemm-wgmma-blocks VALUES=1,2 OPS=linear OUT=$OUT/r/ab \
  WORKLOADS='sdxl-ours:--arch sdxl --what unet --size 1024 --gemm-wgmma 1 --gemm-wgmma-cluster 1;sdxl-cublas:--arch sdxl --what unet --size 1024 --gemm-wgmma 0;sd15-ours:--arch sd15 --what unet --size 512 --gemm-wgmma 1 --gemm-wgmma-cluster 1;sd15-cublas:--arch sd15 --what unet --size 512 --gemm-wgmma 0' \
  timeout 150 scripts/gpu-ab.sh 2>&1 | grep -E "graph|sdxl-(ours|cublas) \| linear 2048|8192x320x320|512x1280x1280|failed" | head -40
tar czf $OUT/results.tgz -C $OUT r && rm -rf $OUT/r
echo "== done ($((SECONDS - T0)) s)"
