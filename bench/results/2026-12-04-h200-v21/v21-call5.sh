#!/usr/bin/env bash
# v21 call 5: build; the GroupNorm and Elementwise suites after the same-bits check
# became one helper (tests only).
# Carry .cache (deps.tar.xz, unpacked first), .whl and .peer.
cd "$(dirname "$0")/../../.."
T0=$SECONDS
STAGES=build BUDGET=150 OUT=$OUT/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh \
  >$OUT/build.txt 2>&1
grep -E "built|FAILED" $OUT/build.txt | head -5
echo "== tests ($((SECONDS - T0)) s)"
timeout 60 build-gpu/bin/kiln_backend_tests --gtest_filter='Shapes/GroupNorm.*:Elementwise.*' \
  >$OUT/tests.log 2>&1
echo "tests exit $?"
grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure|tests from .*total" $OUT/tests.log | head -12
echo "== done ($((SECONDS - T0)) s)"
