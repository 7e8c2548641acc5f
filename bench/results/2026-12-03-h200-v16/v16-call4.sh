#!/usr/bin/env bash
# v16 call 4, on wip/gemm-wgmma: the GEMM with clusters of two sharing B by TMA
# multicast, BN 128/160/256 by shape. Tests, A/B against cuBLASLt, cluster 1 vs 2, ncu
# of the 2048x1280x1280 launch (ours and cuBLASLt's).
cd "$(dirname "$0")/.."
T0=$SECONDS
left() { echo $((585 - (SECONDS - T0))); }
mkdir -p $OUT/r
STAGES=build BUDGET=150 OUT=$OUT/r/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$OUT/r/check.txt 2>&1
grep -E "built|FAILED|error" $OUT/r/check.txt | head
T=build-gpu/bin/kiln_backend_tests
echo "== LinearWgmma tests ($((SECONDS - T0)) s)"
timeout 150 $T --gtest_filter='*LinearWgmma*' > $OUT/r/tests.txt 2>&1; echo "exit $?"
grep -E "FAILED|PASSED|nmse|did not run|rror" $OUT/r/tests.txt | head -20
echo "== A/B --gemm-wgmma ($((SECONDS - T0)) s)"
SKIP_BUILD=1 FLAG=gemm-wgmma VALUES=0,1 OPS=linear OUT=$OUT/r/ab \
  WORKLOADS='sd15:--arch sd15 --what unet --size 512;sdxl:--arch sdxl --what unet --size 1024' \
  timeout 150 scripts/gpu-ab.sh 2>&1 | grep -E "graph|sdxl-unet \| linear|8192x320x320|failed" | head -24
echo "== A/B cluster 1 vs 2 ($((SECONDS - T0)) s)"
SKIP_BUILD=1 FLAG=gemm-wgmma-cluster VALUES=1,2 OPS=linear OUT=$OUT/r/abc \
  WORKLOADS='sdxl:--arch sdxl --what unet --size 1024 --gemm-wgmma 1' \
  timeout 90 scripts/gpu-ab.sh 2>&1 | grep -E "graph|sdxl-unet \| linear|failed" | head -16
echo "== ncu ($((SECONDS - T0)) s)"
command -v ncu >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
S="--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy"
timeout 100 ncu $S --kernel-name regex:gemm_wgmma --launch-count 3 $T --gtest_filter='Shapes/LinearWgmma.MatchesCpu/0' > $OUT/r/ncu-ours.txt 2>&1
timeout 60 ncu $S --kernel-name regex:'nvjet|sm90|gemm' --launch-count 2 $T --gtest_filter='Shapes/Linear.MatchesCpu/16' > $OUT/r/ncu-cublas.txt 2>&1
grep -E "gemm_wgmma_kernel|nvjet|Duration|L2 Cache Throughput|Compute \(SM\) Throughput|DRAM Throughput|Memory Throughput" $OUT/r/ncu-ours.txt $OUT/r/ncu-cublas.txt | sed 's/ \{3,\}/  /g' | cut -c1-150 | head -40
tar czf $OUT/results.tgz -C $OUT r && rm -rf $OUT/r
echo "== done ($((SECONDS - T0)) s)"
