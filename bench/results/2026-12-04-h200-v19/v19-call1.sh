#!/usr/bin/env bash
# v19 call 1: build; the UpsampleConv and Elementwise suites; the A/B of
# --upsample-phases 0,1 on the VAE (512², 1024²) and both UNets; the goldens on CUDA.
# Carry .cache/deps.tar.xz (cuDNN's frontend and CUTLASS under .deps/) and .whl.
cd "$(dirname "$0")/../../.."
T0=$SECONDS
left() { echo $((585 - (SECONDS - T0))); }
R=$OUT/r
mkdir -p $R
STAGES=build BUDGET=240 OUT=$R/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$R/check.txt 2>&1
grep -E "CUTLASS|built|FAILED" $R/check.txt | head -5
echo "== tests ($((SECONDS - T0)) s)"
timeout 100 build-gpu/bin/kiln_backend_tests --gtest_filter='Shapes/UpsampleConv.*:Elementwise.*' \
  >$R/tests.log 2>&1; echo "tests exit $?"
grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure|nmse" $R/tests.log | head -20
echo "== --upsample-phases 0,1 ($((SECONDS - T0)) s)"
W='vae:--arch sd15 --what vae --size 512,1024 --reps 5;sd15:--arch sd15 --what unet --size 512'
W+=';sdxl:--arch sdxl --what unet --size 1024'
SKIP_BUILD=1 FLAG=upsample-phases VALUES=0,1 OPS='conv2d|upsample|interleave' OUT=$R/ab \
  WORKLOADS="$W" timeout 260 scripts/gpu-ab.sh 2>&1 | grep -E "^\||failed" | grep -vE "^\|---"
grep -h "peak\|| f16 |" $R/ab/runs/*.md 2>/dev/null | grep -E "eager|graph" | head -20
echo "== goldens on CUDA ($((SECONDS - T0)) s)"
timeout $(($(left) - 15)) build-gpu/bin/kiln_backend_tests --gtest_filter='*sd1_*:*sd2v_*:*sdxl_*' \
  >$R/golden.log 2>&1; echo "goldens exit $?"
grep -E "^\[  (PASSED|FAILED)|FAILED  \]" $R/golden.log | head -10
grep -E "PSNR" $R/golden.log | awk '{print $(NF-1), $0}' | sort -n | head -3
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R
echo "== done ($((SECONDS - T0)) s)"
