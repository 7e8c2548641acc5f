#!/usr/bin/env bash
# v21 call 2: GroupNorm's statistics pass, a second kernel (group_norm_stats2: blocks of
# up to 512 threads, the rows' sums in a tree, gamma/beta loaded before the fold) under
# launch shapes picked by KILN_GN_STATS="threads,U,M,W" (an experiment switch), against
# the first kernel (unset). Build; the GroupNorm and Elementwise suites under two of the
# shapes; then per shape (graph replay, event nodes) on the VAE at 512² and 1024² and
# both UNets for every shape, with the first kernel first and last (drift).
# Carry .cache (deps.tar.xz, unpacked first), .whl and .peer.
cd "$(dirname "$0")/../../.."
T0=$SECONDS
R=$OUT/r
mkdir -p $R
STAGES=build BUDGET=200 OUT=$R/check COMMIT=${COMMIT:-unknown} scripts/gpu-check.sh >$R/build.txt 2>&1
grep -E "built|FAILED|error" $R/build.txt | head -5
for cfg in 512,4,2,1 512,8,2,1; do
  echo "== tests with KILN_GN_STATS=$cfg ($((SECONDS - T0)) s)"
  KILN_GN_STATS=$cfg timeout 60 build-gpu/bin/kiln_backend_tests \
    --gtest_filter='*GroupNorm*:*Elementwise*' >$R/tests-$cfg.log 2>&1
  echo "tests exit $?"
  grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure" $R/tests-$cfg.log | head -8
done
export KILN_PLAN_CACHE=/tmp/v21-plans
CONFIGS="legacy 256,4,8,0 256,4,2,1 512,4,2,1 512,4,4,1 512,2,2,1 512,8,2,1 512,4,8,0 legacy"
i=0
for cfg in $CONFIGS; do
  i=$((i + 1))
  echo "== $cfg ($((SECONDS - T0)) s)"
  for w in "vae 512 sd15" "vae 1024 sd15" "unet 512 sd15" "unet 1024 sdxl"; do
    set -- $w
    env $([ $cfg = legacy ] || echo KILN_GN_STATS=$cfg) timeout 60 build-gpu/bin/kiln bench \
      --arch $3 --what $1 --size $2 --per-shape >$R/$i-$cfg-$3-$1-$2.txt 2>&1 || echo "  $w exit $?"
  done
done
python3 - $R "$CONFIGS" <<'PY'
import re, sys, collections, glob, os
R, configs = sys.argv[1], sys.argv[2].split()
cols = [f"{i + 1}-{c}" for i, c in enumerate(configs)]
table = collections.OrderedDict()
for col in cols:
    for path in sorted(glob.glob(f"{R}/{col}-*.txt")):
        w = os.path.basename(path)[len(col) + 1:-4]
        for line in open(path):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 6 and cells[4] == "graph":
                table.setdefault((w, "step (graph)"), {})[col] = float(cells[5])
            elif len(cells) >= 3 and "group_norm" in cells[0]:
                table.setdefault((w, cells[0] + f" x{cells[1]}"), {})[col] = float(cells[2])
        for (ww, k), v in list(table.items()):
            pass
# GroupNorm total per workload
tot = collections.OrderedDict()
for (w, k), v in table.items():
    if "group_norm" in k:
        for c, x in v.items():
            tot.setdefault((w, "GroupNorm total"), {}).setdefault(c, 0.0)
            tot[(w, "GroupNorm total")][c] += x
table.update(tot)
print("| workload | row | " + " | ".join(c.split("-", 1)[1] for c in cols) + " |")
print("|---|---|" + "---|" * len(cols))
for (w, k), v in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1] != "step (graph)", kv[0][1] != "GroupNorm total", kv[0][1])):
    print(f"| {w} | {k} | " + " | ".join(f"{v[c]:.3f}" if c in v else "-" for c in cols) + " |")
PY
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R
echo "== done ($((SECONDS - T0)) s)"
