#!/usr/bin/env bash
# v20 call 1: build; the Conv2d suite (every narrow form); the A/B of
# --narrow-conv-form 0 (CUDA cores or cuDNN) against auto (timed, tensor-core forms
# included) on the VAE (512², 1024²) and both UNets; the cuDNN workspace cap A/B on the
# VAE (512, 128, 32 MiB), with each row's peak memory.
# Carry .cache/deps.tar.xz (cuDNN's frontend and CUTLASS under .deps/) and .whl.
cd "$(dirname "$0")/../../.."
T0=$SECONDS
R=$OUT/r
mkdir -p $R
STAGES=build BUDGET=240 OUT=$R/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$R/check.txt 2>&1
grep -E "CUTLASS|built|FAILED" $R/check.txt | head -5
echo "== tests ($((SECONDS - T0)) s)"
timeout 120 build-gpu/bin/kiln_backend_tests --gtest_filter='Shapes/Conv2d.*' \
  >$R/tests.log 2>&1; echo "tests exit $?"
grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure" $R/tests.log | head -20
echo "== --narrow-conv-form 0,auto ($((SECONDS - T0)) s)"
W='vae:--arch sd15 --what vae --size 512,1024 --reps 5;sd15:--arch sd15 --what unet --size 512'
W+=';sdxl:--arch sdxl --what unet --size 1024'
SKIP_BUILD=1 FLAG=narrow-conv-form VALUES=0,auto OPS='->[348]$' OUT=$R/ab \
  WORKLOADS="$W" timeout 200 scripts/gpu-ab.sh 2>&1 | grep -E "^\||failed" | grep -vE "^\|---"
echo "== --conv-workspace-mib 512,128,32 ($((SECONDS - T0)) s)"
SKIP_BUILD=1 FLAG=conv-workspace-mib VALUES=512,128,32 OPS='upsample|interleave' OUT=$R/ws \
  WORKLOADS='vae:--arch sd15 --what vae --size 512,1024 --reps 5' timeout 150 scripts/gpu-ab.sh \
  2>&1 | grep -E "^\||failed" | grep -vE "^\|---"
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R
echo "== done ($((SECONDS - T0)) s)"
