#!/usr/bin/env bash
# v21 call 1: build; the suites that c10e0e4's read-through touched (Conv2d with the
# narrow path unforced, UpsampleConv, Elementwise, GroupNorm); then where GroupNorm's
# time goes on the VAE's mid-size tensors: per shape (graph replay, event nodes) and
# per kernel under ncu as the kernels run (no cache flush, clocks free); and ncu's
# memory view of conv_out's tensor-core kernel at 1024².
# Carry .cache (deps.tar.xz, unpacked first), .whl and .peer.
cd "$(dirname "$0")/../../.."
T0=$SECONDS
R=$OUT/r
mkdir -p $R
STAGES=build BUDGET=200 OUT=$R/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$R/build.txt 2>&1
grep -E "built|FAILED|error" $R/build.txt | head -5
echo "== tests ($((SECONDS - T0)) s)"
timeout 150 build-gpu/bin/kiln_backend_tests \
  --gtest_filter='Shapes/Conv2d.*:Shapes/UpsampleConv.*:*Elementwise*:*GroupNorm*' >$R/tests.log 2>&1
echo "tests exit $?"
grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure|tests from .*total" $R/tests.log | head -12
echo "== per shape, VAE 512 ($((SECONDS - T0)) s)"
timeout 60 build-gpu/bin/kiln bench --arch sd15 --what vae --size 512 --per-shape >$R/pershape.txt 2>&1
grep -iE "group_norm|interleave|^\| *vae" $R/pershape.txt | head -20
export PATH=/usr/local/cuda/bin:$PATH
echo "== ncu GroupNorm, VAE 512 ($((SECONDS - T0)) s)"
SKIP_BUILD=1 KERNELS='group_norm' COUNT=64 OUT=$R/ncu-vae512 \
  NCU_ARGS='--cache-control none --clock-control none' \
  BENCH='--arch sd15 --what vae --size 512 --warmup 1' timeout 120 scripts/gpu-profile.sh | tail -30
echo "== ncu GroupNorm sections ($((SECONDS - T0)) s)"
timeout 90 ncu --cache-control none --clock-control none --kernel-name regex:group_norm \
  --launch-skip 0 --launch-count 4 --section SpeedOfLight --section LaunchStats --section Occupancy \
  --section WarpStateStats --section MemoryWorkloadAnalysis \
  build-gpu/bin/kiln bench --arch sd15 --what vae --size 512 --reps 1 --no-graphs --warmup 1 \
  >$R/gn-sections.txt 2>&1
grep -E "group_norm|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers|Grid Size|Block Size|Stall|Warp Cycles" $R/gn-sections.txt | head -60
echo "== ncu conv_out 1024 ($((SECONDS - T0)) s)"
timeout 90 ncu --kernel-name regex:few_out_mma --launch-count 2 --section SpeedOfLight \
  --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy --section WarpStateStats \
  build-gpu/bin/kiln bench --arch sd15 --what vae --size 1024 --reps 1 --no-graphs --warmup 1 \
  >$R/convout-sections.txt 2>&1
grep -E "few_out|Duration|Throughput|Hit Rate|Occupancy|Grid Size|Block Size|Stall" $R/convout-sections.txt | head -40
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R
echo "== done ($((SECONDS - T0)) s)"
