#!/usr/bin/env bash
# v15 call 5: SDXL in the same run as the peer (call 4's check ran out of time for the
# peer's SDXL graphs) and the peer's peak memory for SDXL and SD1.5.
cd "$(dirname "$0")/.."
T0=$SECONDS
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site
mkdir -p $OUT
STAGES=build BUDGET=100 OUT=$OUT/build COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$OUT/build.txt 2>&1
grep -E "built|FAILED" $OUT/build.txt
echo "== kiln ($((SECONDS - T0)) s)"
timeout 60 build-gpu/bin/kiln bench --arch sdxl --what unet --size 1024 --commit ${COMMIT:-unknown} \
  --json $OUT/kiln-sdxl.json > $OUT/kiln-sdxl.md 2>&1
grep -E "\| (eager|graph) " $OUT/kiln-sdxl.md
echo "== peer sdxl graphs ($((SECONDS - T0)) s)"
timeout 210 python3 .peer/bench_diffusers.py sdxl-unet --modes graphs > $OUT/peer-sdxl.log 2>&1; echo "exit $?"
tail -4 $OUT/peer-sdxl.log
echo "== peer peak ($((SECONDS - T0)) s)"
timeout 70 python3 - .peer sdxl-unet sd15-unet > $OUT/peer-peak.log 2>&1 <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import torch, bench_diffusers as peer
for name in sys.argv[2:]:
    batch = 2 if name.endswith("unet") else 1
    torch.manual_seed(0)
    module, call = peer.workload(name, batch, torch.float16, "")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        call(module)
    torch.cuda.synchronize()
    print(f"| {name} | {batch} | peak | {torch.cuda.max_memory_reserved() / 2**20:.0f} |", flush=True)
    del module
    torch.cuda.empty_cache()
PY
echo "exit $?"; cat $OUT/peer-peak.log | tail -3
echo "== done ($((SECONDS - T0)) s)"
