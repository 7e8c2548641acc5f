#!/usr/bin/env bash
# The GPU's clocks and power while kiln's workloads run, on the GPU machine in one call:
# builds kiln (the build stage of scripts/gpu-check.sh), samples nvidia-smi every 20 ms
# in the background, and runs each workload's graph replay for several seconds, then
# a long f16 matrix product through PyTorch for a reference of the GPU at full load.
# Prints, per phase, the median and lowest SM clock, the median power draw and the
# throttle reasons seen. Whether a step's GEMMs run slower than the same GEMMs alone
# because the GPU lowers its clock under the step's power is what it answers; it
# changes no setting of the GPU.
#
#   (device) tar xJf .cache/deps.tar.xz && scripts/gpu-clocks.sh     carry .cache
#   SKIP_BUILD=1 ...     use build-gpu/ as it is
#
# Output in $OUT (default out/gpu-clocks): smi.csv, phases.txt, seconds.txt, bench logs
# and table.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu-clocks}
mkdir -p "$OUT"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  STAGES=build OUT="$OUT/check" scripts/gpu-check.sh >"$OUT/build.txt" 2>&1
  grep -E "built|FAILED" "$OUT/build.txt"
fi
KILN=build-gpu/bin/kiln
[ -x "$KILN" ] || { echo "gpu-clocks: no $KILN" >&2; tail -20 "$OUT/build.txt" >&2; exit 1; }
export KILN_PLAN_CACHE=${KILN_PLAN_CACHE:-/tmp/kiln-clock-plans}

# Newer drivers call the throttle reasons clock event reasons; take whichever answers.
query=timestamp,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu
if nvidia-smi --query-gpu=clocks_event_reasons.active --format=csv >/dev/null 2>&1; then
  query+=,clocks_event_reasons.active
else
  query+=,clocks_throttle_reasons.active
fi
nvidia-smi --query-gpu=$query --format=csv,noheader,nounits -lms 20 >"$OUT/smi.csv" 2>"$OUT/smi.err" &
smi=$!
phase() { echo "$(date +%s.%N) $1" >>"$OUT/phases.txt"; }
: >"$OUT/phases.txt"

# Plans and warm-up first, outside the sampled phases.
for w in "--arch sdxl --what unet --size 1024" "--arch sd15 --what unet --size 512" \
  "--arch sd15 --what vae --size 1024"; do
  $KILN bench $w --reps 3 --warmup 1 >/dev/null 2>&1
done
phase "idle start"
sleep 2
phase "idle end"
run() {  # name, bench arguments
  local name=$1
  shift
  phase "$name start"
  $KILN bench "$@" >"$OUT/bench-$name.txt" 2>&1
  phase "$name end"
}
run sdxl-unet --arch sdxl --what unet --size 1024 --reps 300 --warmup 3
run sd15-unet --arch sd15 --what unet --size 512 --reps 1500 --warmup 10
run vae-1024 --arch sd15 --what vae --size 1024 --reps 300 --warmup 3
# The phase starts once PyTorch is imported and the product warmed up (the import
# takes seconds at idle power).
python3 - "$OUT/phases.txt" <<'EOF' >"$OUT/matmul.txt" 2>&1
import sys, time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
for _ in range(3): a @ b
torch.cuda.synchronize()
t = time.time(); n = 0
open(sys.argv[1], "a").write(f"{t:.6f} matmul start\n")
while time.time() - t < 6:
    for _ in range(10): a @ b
    torch.cuda.synchronize(); n += 10
dt = time.time() - t
open(sys.argv[1], "a").write(f"{time.time():.6f} matmul end\n")
print(f"8192^3 f16 matmul: {2 * 8192**3 * n / dt / 1e12:.0f} TFLOP/s over {dt:.1f} s")
EOF
sleep 0.5
kill $smi 2>/dev/null
wait $smi 2>/dev/null

python3 - "$OUT" <<'EOF' | tee "$OUT/table.md"
import sys, statistics, datetime
out = sys.argv[1]
phases = {}
for line in open(f"{out}/phases.txt"):
    t, name, edge = line.split()
    phases.setdefault(name, {})[edge] = float(t)
rows = []
for line in open(f"{out}/smi.csv"):
    f = [x.strip() for x in line.split(",")]
    try:
        ts = datetime.datetime.strptime(f[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
        rows.append((ts, float(f[1]), float(f[2]), float(f[3]), float(f[4]), float(f[5]), f[6]))
    except (ValueError, IndexError):
        continue
print("| phase | samples | SM MHz median | SM MHz lowest | memory MHz | power W median (limit) | temperature C | throttle reasons seen |")
print("|---|---|---|---|---|---|---|---|")
for name, e in phases.items():
    # The middle of each phase: the first and last 10% left out (start-up, the tail).
    a, b = e["start"], e["end"]
    a, b = a + 0.1 * (b - a), b - 0.1 * (b - a)
    s = [r for r in rows if a <= r[0] <= b]
    if not s:
        print(f"| {name} | 0 | | | | | | |")
        continue
    sm = [r[1] for r in s]
    reasons = sorted({r[6] for r in s})
    print(f"| {name} | {len(s)} | {statistics.median(sm):.0f} | {min(sm):.0f} | "
          f"{statistics.median(r[2] for r in s):.0f} | {statistics.median(r[3] for r in s):.0f} "
          f"({s[0][4]:.0f}) | {max(r[5] for r in s):.0f} | {' '.join(reasons)} |")
# Second by second (median SM MHz / W), with the phases' edges: a bench runs its eager
# repetitions first and its graph replays after, which the seconds tell apart.
t0 = rows[0][0] if rows else 0.0
with open(f"{out}/seconds.txt", "w") as f:
    for name, e in phases.items():
        f.write(f"{name}: {e['start'] - t0:.1f} .. {e['end'] - t0:.1f} s\n")
    by_second = {}
    for r in rows:
        by_second.setdefault(int(r[0] - t0), []).append(r)
    for k in sorted(by_second):
        v = by_second[k]
        f.write(f"{k} {statistics.median(r[1] for r in v):.0f} MHz "
                f"{statistics.median(r[3] for r in v):.0f} W\n")
EOF
grep -h "graph" "$OUT"/bench-*.txt | grep "|" | head -10
cat "$OUT/matmul.txt"
