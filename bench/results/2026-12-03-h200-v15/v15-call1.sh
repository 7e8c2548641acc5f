#!/usr/bin/env bash
# v15 call 1: build; the attention tests on the producer path; producer vs v14 wgmma
# (A/B), rows 128/192 for the producer; the default (auto) bench per shape (cuDNN)
# with the graph row's memory.
cd "$(dirname "$0")/.."
T0=$SECONDS
left() { echo $((585 - (SECONDS - T0))); }
mkdir -p $OUT/r
STAGES=build BUDGET=150 OUT=$OUT/r/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$OUT/r/check.txt 2>&1
grep -E "built|FAILED|error" $OUT/r/check.txt | head
echo "== producer tests ($((SECONDS - T0)) s)"
f=""; for i in $(seq 0 21); do f="$f:Shapes/Attention.*/$((7*i+5))"; done
timeout 150 build-gpu/bin/kiln_backend_tests --gtest_filter="${f:1}" > $OUT/r/tests.txt 2>&1; echo "exit $?"
grep -E "FAILED|PASSED|Failure|error|Expected|Which" $OUT/r/tests.txt | head -30
echo "== A/B producer ($((SECONDS - T0)) s)"
SKIP_BUILD=1 FLAG=flash-wgmma-producer VALUES=0,1 OPS=attention OUT=$OUT/r/prod \
  WORKLOADS='sd15:--arch sd15 --what unet --size 512 --attention kiln --flash-wgmma 1;sdxl:--arch sdxl --what unet --size 1024 --attention kiln --flash-wgmma 1' \
  timeout 200 scripts/gpu-ab.sh 2>&1 | grep -vE "^$" | head -60
echo "== auto bench ($((SECONDS - T0)) s)"
for a in sd15:512 sdxl:1024; do
  [ $(left) -lt 60 ] && break
  timeout 90 build-gpu/bin/kiln bench --arch ${a%%:*} --what unet --size ${a##*:} --per-shape > $OUT/r/auto-${a%%:*}.md 2>&1
  grep -E "\| (eager|graph) |^\| attention" $OUT/r/auto-${a%%:*}.md | head -8
done
echo "== producer rows A/B ($((SECONDS - T0)) s)"
if [ $(left) -gt 100 ]; then
  SKIP_BUILD=1 FLAG=flash-wgmma-rows VALUES=128,192 OPS=attention OUT=$OUT/r/rows \
    WORKLOADS='sdxl:--arch sdxl --what unet --size 1024 --attention kiln --flash-wgmma 1 --flash-wgmma-producer 1' \
    timeout $(( $(left) - 15 )) scripts/gpu-ab.sh 2>&1 | grep -vE "^$" | head -30
fi
tar czf $OUT/results.tgz -C $OUT r && rm -rf $OUT/r
echo "== done ($((SECONDS - T0)) s)"
