#!/usr/bin/env bash
# v21 call 4: build; the GroupNorm and LayerNorm suites (call 3's test stage ran out of
# time before them); kiln bench and the peer's VAE compiles (512², 1024²) in the same
# run, for the VAE ratios at this commit (call 5 of v20 in the same form).
# Carry .cache (deps.tar.xz, unpacked first), .whl and .peer.
cd "$(dirname "$0")/../../.."
T0=$SECONDS
STAGES=build BUDGET=200 OUT=$OUT/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh \
  >$OUT/build.txt 2>&1
grep -E "built|FAILED" $OUT/build.txt | head -5
echo "== tests ($((SECONDS - T0)) s)"
timeout 100 build-gpu/bin/kiln_backend_tests --gtest_filter='Shapes/GroupNorm.*:Shapes/LayerNorm.*' \
  >$OUT/tests.log 2>&1
echo "tests exit $?"
grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure|tests from .*total" $OUT/tests.log | head -12
echo "== bench and the peer's VAE ($((SECONDS - T0)) s)"
STAGES=bench,peer PEER_ONLY=vae-512,vae-1024 BUDGET=$((520 - (SECONDS - T0))) OUT=$OUT/check \
  COMMIT=${COMMIT:-unknown} PACK_LOGS=1 scripts/gpu-check.sh 2>&1 | tail -16
echo "== done ($((SECONDS - T0)) s)"
