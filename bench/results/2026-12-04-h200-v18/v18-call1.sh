#!/usr/bin/env bash
# v18 call 1: build; the LinearGeglu (every form and store width) and LayerNorm suites;
# A/Bs on both UNets: --geglu-fused 0,1, --geglu-wide-stores 0,1, --geglu-form
# pingpong,cooperative; then ncu on the fused kernel in an SDXL forward.
# Carry .deps/cudnn-frontend-1.32.0 and .cutlass.
cd "$(dirname "$0")/../../.."
scripts/fetch-cutlass.sh >/dev/null
T0=$SECONDS
left() { echo $((580 - (SECONDS - T0))); }
R=$OUT/r
mkdir -p $R
STAGES=build BUDGET=200 OUT=$R/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$R/check.txt 2>&1
grep -E "CUTLASS|built|failed" $R/check.txt | head -5
echo "== tests ($((SECONDS - T0)) s)"
timeout 120 build-gpu/bin/kiln_backend_tests --gtest_filter='Shapes/LinearGeglu.*:Shapes/LayerNorm.*' \
  >$R/tests.log 2>&1; echo "tests exit $?"
grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure" $R/tests.log | head -20
W='sd15:--arch sd15 --what unet --size 512;sdxl:--arch sdxl --what unet --size 1024'
OPS='geglu|layer_norm|linear [0-9]+x(10240|5120|2560)x'
for ab in "geglu-fused 0,1" "geglu-wide-stores 0,1" "geglu-form pingpong,cooperative"; do
  set -- $ab
  echo "== --$1 $2 ($((SECONDS - T0)) s)"
  SKIP_BUILD=1 FLAG=$1 VALUES=$2 OPS="$OPS" OUT=$R/ab-$1 WORKLOADS="$W" \
    timeout 120 scripts/gpu-ab.sh 2>&1 | grep -E "^\|" | grep -vE "^\|---"
done
echo "== ncu ($((SECONDS - T0)) s)"
export PATH=/usr/local/cuda/bin:$PATH
M='gpu__time_duration.sum,sm__inst_issued.avg.pct_of_peak_sustained_active'
M+=',sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active'
M+=',regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
for wide in 0 1; do
  timeout $(( ($(left) - 20) / (2 - wide) )) ncu --csv --kernel-name regex:device_kernel --launch-count 6 --metrics "$M" \
    build-gpu/bin/kiln bench --arch sdxl --what unet --size 1024 --reps 1 --no-graphs --warmup 1 \
    --geglu-wide-stores $wide >$R/ncu-wide$wide.csv 2>$R/ncu-wide$wide.log
  echo "ncu wide=$wide exit $?"
done
python3 - $R/ncu-wide0.csv $R/ncu-wide1.csv <<'PY'
import csv, sys, collections
for path in sys.argv[1:]:
    try:
        lines = [l for l in open(path) if l.startswith('"')]
    except OSError:
        continue
    rows = list(csv.DictReader(lines))
    by = collections.OrderedDict()
    for r in rows:
        key = (r["ID"], r["Grid Size"])
        by.setdefault(key, {})[r["Metric Name"]] = r["Metric Value"]
    print(f"\n{path.rsplit('/', 1)[-1]}")
    for (i, grid), m in by.items():
        stalls = {k.split("stalled_")[1].split("_per")[0]: float(v.replace(",", ""))
                  for k, v in m.items() if "stalled_" in k}
        top = sorted(stalls.items(), key=lambda kv: -kv[1])[:6]
        print(f"launch {i} grid {grid}: {m.get('gpu__time_duration.sum')} ns, issue "
              f"{m.get('sm__inst_issued.avg.pct_of_peak_sustained_active')}%, gmma "
              f"{m.get('sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active')}%; stalls "
              + ", ".join(f"{k} {v:.2f}" for k, v in top))
PY
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R
echo "== done ($((SECONDS - T0)) s)"
