#!/usr/bin/env bash
# v16 call 1 (prepared at the end of v15): the test stage (first GPU run of the shared
# attention references, 1042cfe, and of the short-KV kernel's test path), the TMA probe,
# and the short-KV kernel against the flash kernel and cuDNN.
cd "$(dirname "$0")/.."
T0=$SECONDS
left() { echo $((585 - (SECONDS - T0))); }
mkdir -p $OUT/r
STAGES=build,test BUDGET=330 OUT=$OUT/r/check PACK_LOGS=1 COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$OUT/r/check.txt 2>&1
grep -vE "^  -- " $OUT/r/check.txt | grep -E "built|passed|failed|FAILED|Failure|backend ops|goldens|\+[0-9]+s\]" | head -30
echo "== TMA probe ($((SECONDS - T0)) s)"
nvcc -std=c++17 -O2 -gencode arch=compute_90a,code=sm_90a tools/probe/tma_wgmma_probe.cu -o /tmp/tma_probe 2>&1 | tail -3
timeout 30 /tmp/tma_probe; echo "probe exit $?"
echo "== short-KV kernel A/B, --attention kiln ($((SECONDS - T0)) s)"
SKIP_BUILD=1 FLAG=flash-short-kv-kernel VALUES=0,1 OPS=attention OUT=$OUT/r/short \
  WORKLOADS='sd15:--arch sd15 --what unet --size 512 --attention kiln;sdxl:--arch sdxl --what unet --size 1024 --attention kiln' \
  timeout $(( $(left) - 60 )) scripts/gpu-ab.sh 2>&1 | grep -E "x77|graph|failed"
echo "== auto with the short-KV kernel ($((SECONDS - T0)) s)"
[ $(left) -gt 40 ] && timeout $(( $(left) - 5 )) build-gpu/bin/kiln bench --arch sdxl --what unet --size 1024 --per-shape --flash-short-kv-kernel 1 > $OUT/r/auto-sdxl-short.md 2>&1
grep -E "\| graph|x77" $OUT/r/auto-sdxl-short.md
tar czf $OUT/results.tgz -C $OUT r && rm -rf $OUT/r
echo "== done ($((SECONDS - T0)) s)"
