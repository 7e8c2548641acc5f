#!/usr/bin/env bash
# v16 call 5, on wip/gemm-wgmma (main + the GEMM, off by default): the test stage (main's
# defaults: the short-KV kernel on), then the GEMM with its epilogue's loads ahead of its
# stores and 4-7 stages: tests, A/B against cuBLASLt, cluster 1 vs 2, ncu stall reasons.
cd "$(dirname "$0")/.."
T0=$SECONDS
mkdir -p $OUT/r
STAGES=build,test BUDGET=300 OUT=$OUT/r/check PACK_LOGS=1 COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$OUT/r/check.txt 2>&1
grep -vE "^  -- " $OUT/r/check.txt | grep -E "built|passed|failed|FAILED|Failure|backend ops|goldens|\+[0-9]+s\]" | head -20
T=build-gpu/bin/kiln_backend_tests
echo "== LinearWgmma tests ($((SECONDS - T0)) s)"
timeout 120 $T --gtest_filter='*LinearWgmma*' > $OUT/r/tests.txt 2>&1; echo "exit $?"
grep -E "FAILED|PASSED|nmse|did not run|rror" $OUT/r/tests.txt | head -20
echo "== A/B --gemm-wgmma ($((SECONDS - T0)) s)"
SKIP_BUILD=1 FLAG=gemm-wgmma VALUES=0,1 OPS=linear OUT=$OUT/r/ab \
  WORKLOADS='sd15:--arch sd15 --what unet --size 512;sdxl:--arch sdxl --what unet --size 1024' \
  timeout 120 scripts/gpu-ab.sh 2>&1 | grep -E "graph|sdxl-unet \| linear|8192x320x320|512x1280x1280|failed" | head -24
echo "== A/B cluster 1 vs 2 ($((SECONDS - T0)) s)"
SKIP_BUILD=1 FLAG=gemm-wgmma-cluster VALUES=1,2 OPS=linear OUT=$OUT/r/abc \
  WORKLOADS='sdxl:--arch sdxl --what unet --size 1024 --gemm-wgmma 1' \
  timeout 80 scripts/gpu-ab.sh 2>&1 | grep -E "graph|sdxl-unet \| linear|failed" | head -16
echo "== SASS ($((SECONDS - T0)) s)"
export PATH=/usr/local/cuda/bin:$PATH
O=$(find build-gpu -name 'gemm_wgmma.cu.o' | head -1)
cuobjdump -sass $O > $OUT/r/sass.txt 2>&1
awk '/Function : .*gemm_wgmma_kernelI6__halfLi160ELi1E/{on=1} on&&/Function : /&&!/Li160ELi1E/{on=0} on' $OUT/r/sass.txt > $OUT/r/sass-160-1.txt
grep -cE "HGMMA" $OUT/r/sass-160-1.txt; grep -E "HGMMA|WARPGROUP|SYNCS|DEPBAR|BAR\.|UTMALDG|WARPSYNC" $OUT/r/sass-160-1.txt | sed 's/^ *//' | cut -c1-110 | head -40
echo "== ncu ($((SECONDS - T0)) s)"
timeout 90 ncu --metrics 'regex:smsp__warp_issue_stalled_.*_per_warp_active\.pct$,gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_throughput.avg.pct_of_peak_sustained_elapsed,regex:sm__pipe_tensor.*gmma.*pct_of_peak_sustained_active$' \
  --kernel-name regex:gemm_wgmma --launch-count 1 $T --gtest_filter='Shapes/LinearWgmma.MatchesCpu/1' > $OUT/r/ncu.txt 2>&1
grep -vE "^==|^\[|^Note|^$" $OUT/r/ncu.txt | awk '$NF+0 > 0.5 || /duration|throughput|gmma/' | sed 's/ \{2,\}/ /g' | head -40
tar czf $OUT/results.tgz -C $OUT r && rm -rf $OUT/r
echo "== done ($((SECONDS - T0)) s)"
