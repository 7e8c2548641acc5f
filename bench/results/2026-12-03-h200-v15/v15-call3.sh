#!/usr/bin/env bash
# v15 call 3: build + the check's test stage (backend ops, goldens on CUDA) with the
# fused context/time projections; the default bench per shape.
cd "$(dirname "$0")/.."
T0=$SECONDS
left() { echo $((585 - (SECONDS - T0))); }
mkdir -p $OUT/r
STAGES=build,test BUDGET=400 OUT=$OUT/r/check PACK_LOGS=1 COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$OUT/r/check.txt 2>&1
grep -vE "^  -- " $OUT/r/check.txt | tail -25
echo "== auto bench ($((SECONDS - T0)) s)"
for a in sd15:512 sdxl:1024; do
  [ $(left) -lt 60 ] && break
  timeout 90 build-gpu/bin/kiln bench --arch ${a%%:*} --what unet --size ${a##*:} --per-shape > $OUT/r/auto-${a%%:*}.md 2>&1
  grep -E "\| (eager|graph) |^\| (attention|linear) b?[0-9]+x|^\| linear 2x|^\| linear 154|^\| group_norm" $OUT/r/auto-${a%%:*}.md | head -30
done
tar czf $OUT/results.tgz -C $OUT r && rm -rf $OUT/r
echo "== done ($((SECONDS - T0)) s)"
