#!/usr/bin/env bash
# v15 call 6: ncu of SD1.5's first cross-attention (2 × 8 heads, 4096 × 77, d40), kiln's
# flash kernel and cuDNN's SDPA: why 20 µs where the bytes take about 4.
cd "$(dirname "$0")/.."
T0=$SECONDS
mkdir -p $OUT
STAGES=build BUDGET=90 OUT=$OUT/build COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$OUT/build.txt 2>&1
grep -E "built|FAILED" $OUT/build.txt
S="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis_Tables --section SchedulerStats"
echo "== ncu kiln ($((SECONDS - T0)) s)"
timeout 60 ncu $S --kernel-name-base demangled --kernel-name "regex:flash_attention_kernel<__half, 48, 4" --launch-count 1 \
  build-gpu/bin/kiln bench --arch sd15 --what unet --size 512 --attention kiln --no-graphs --warmup 0 --reps 1 > $OUT/ncu-kiln.txt 2>&1
grep -E "Duration|Elapsed Cycles|Registers|Achieved Occupancy|Theoretical Occupancy|Block Limit|Waves|DRAM Through|Memory Through|Compute \(SM\)|Issue Slots|No Eligible|Warp Cycles Per Issued|Grid Size|Shared Memory Config|Dynamic Shared" $OUT/ncu-kiln.txt | head -30
echo "== ncu cudnn ($((SECONDS - T0)) s)"
timeout 60 ncu $S --kernel-name regex:sdpa --launch-skip 1 --launch-count 1 \
  build-gpu/bin/kiln bench --arch sd15 --what unet --size 512 --attention cudnn --no-graphs --warmup 0 --reps 1 > $OUT/ncu-cudnn.txt 2>&1
grep -E "sdpa|Duration|Achieved Occupancy|Waves|DRAM Through|Grid Size|Block Size|Warp Cycles Per Issued" $OUT/ncu-cudnn.txt | head -14
echo "== done ($((SECONDS - T0)) s)"
