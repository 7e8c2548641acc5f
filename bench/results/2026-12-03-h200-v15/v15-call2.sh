#!/usr/bin/env bash
# v15 call 2: build; producer vs v14 wgmma (A/B) and the producer's rows A/B.
cd "$(dirname "$0")/.."
T0=$SECONDS
left() { echo $((585 - (SECONDS - T0))); }
mkdir -p $OUT/r
STAGES=build BUDGET=150 OUT=$OUT/r/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$OUT/r/check.txt 2>&1
grep -E "built|FAILED|error" $OUT/r/check.txt | head
echo "== A/B producer ($((SECONDS - T0)) s)"
SKIP_BUILD=1 FLAG=flash-wgmma-producer VALUES=0,1 OPS=attention OUT=$OUT/r/prod \
  WORKLOADS='sd15:--arch sd15 --what unet --size 512 --attention kiln --flash-wgmma 1;sdxl:--arch sdxl --what unet --size 1024 --attention kiln --flash-wgmma 1' \
  timeout 250 scripts/gpu-ab.sh 2>&1 | grep -vE "^$" | head -60
echo "== producer rows A/B ($((SECONDS - T0)) s)"
if [ $(left) -gt 100 ]; then
  SKIP_BUILD=1 FLAG=flash-wgmma-rows VALUES=128,192 OPS=attention OUT=$OUT/r/rows \
    WORKLOADS='sdxl:--arch sdxl --what unet --size 1024 --attention kiln --flash-wgmma 1 --flash-wgmma-producer 1' \
    timeout $(( $(left) - 15 )) scripts/gpu-ab.sh 2>&1 | grep -vE "^$" | head -30
fi
tar czf $OUT/results.tgz -C $OUT r && rm -rf $OUT/r
echo "== done ($((SECONDS - T0)) s)"
