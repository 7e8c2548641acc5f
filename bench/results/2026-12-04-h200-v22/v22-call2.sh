#!/usr/bin/env bash
# v22 call 2: how plans are timed. Build; the GEMM and plan-cache suites (the wide
# search's new cases among them); then two same-run A/Bs with one plan cache:
#   1. --plan-timing warm against step (GEMM candidates and convolution paths);
#   2. under step timing, --gemm-search heuristic against wide.
# Run from the repository root: COMMIT=<hash> bash bench/results/2026-12-04-h200-v22/v22-call2.sh
set -u
OUT=${OUT:-$PWD/out/v22-call2}
mkdir -p "$OUT"
export KILN_PLAN_CACHE=$(mktemp -d /tmp/kiln-plans.XXXXXX)
STAGES=build BUDGET=200 OUT="$OUT/check" PACK_LOGS=1 scripts/gpu-check.sh >"$OUT/build.txt" 2>&1
grep -E "built|FAILED" "$OUT/build.txt"
KILN_PLAN_CACHE=$(mktemp -d) timeout 90 build-gpu/bin/kiln_backend_tests \
  --gtest_filter='PlanCache.*:Shapes/Linear.*:Wide/Linear.*' >"$OUT/tests.log" 2>&1
grep -E "^\[  (PASSED|FAILED) |tests ran|FAILED  \]" "$OUT/tests.log" | head -20
SKIP_BUILD=1 OUT="$OUT/timing" FLAG=plan-timing VALUES=warm,step ROUNDS=2 \
  OPS='linear|conv2d' scripts/gpu-ab.sh 2>&1 | grep -v "^gpu-ab:" | head -60
SKIP_BUILD=1 OUT="$OUT/search" BASE_ARGS='--plan-timing step' FLAG=gemm-search \
  VALUES=heuristic,wide ROUNDS=2 OPS='linear' KILN_GEMM_LOG=1 \
  WORKLOADS='sd15-512:--arch sd15 --what unet --size 512;sdxl-1024:--arch sdxl --what unet --size 1024' \
  scripts/gpu-ab.sh 2>&1 | grep -v "^gpu-ab:" | head -60
