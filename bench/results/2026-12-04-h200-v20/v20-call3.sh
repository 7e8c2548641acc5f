#!/usr/bin/env bash
# v20 call 3: build; the UpsampleConv and Elementwise suites; the A/B of
# --interleave-norm-fused 0,1 on the VAE (512², 1024²), twice each, with peak memory.
# Carry .cache/deps.tar.xz (cuDNN's frontend and CUTLASS under .deps/) and .whl.
cd "$(dirname "$0")/../../.."
T0=$SECONDS
R=$OUT/r
mkdir -p $R
STAGES=build BUDGET=240 OUT=$R/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$R/check.txt 2>&1
grep -E "CUTLASS|built|FAILED" $R/check.txt | head -5
echo "== tests ($((SECONDS - T0)) s)"
timeout 150 build-gpu/bin/kiln_backend_tests \
  --gtest_filter='Elementwise.*:Shapes/UpsampleConv.*' >$R/tests.log 2>&1
echo "tests exit $?"
grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure" $R/tests.log | head -20
echo "== --interleave-norm-fused 0,1 ($((SECONDS - T0)) s)"
SKIP_BUILD=1 FLAG=interleave-norm-fused VALUES=0,1 ROUNDS=2 OPS='group_norm|interleave' \
  OUT=$R/ab WORKLOADS='vae:--arch sd15 --what vae --size 512,1024 --reps 10' \
  timeout 150 scripts/gpu-ab.sh 2>&1 | grep -E "^\||failed" | grep -vE "^\|---"
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R
echo "== done ($((SECONDS - T0)) s)"
