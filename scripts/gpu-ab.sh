#!/usr/bin/env bash
# A/B of one `kiln bench` flag on the GPU machine in one call: builds kiln (the build
# stage of scripts/gpu-check.sh, so with the same dependencies; with TEST=1 also its
# test stage), then runs each workload once per value of the flag, alternating the
# values, with one plan cache for all runs, and prints the graph-replay times side by
# side and, per op and shape, the rows whose op matches OPS.
#
#   FLAG=group-norm VALUES=auto,grid OPS=group_norm scripts/gpu-ab.sh
#   WORKLOADS='sd15-512:--arch sd15 --what unet,vae --size 512;vae-1024:--arch sd15 --what vae --size 1024 --reps 5'
#   SKIP_BUILD=1 ...                 use build-gpu/ as it is
#   TEST_FILTER='Wide/Linear.*' ...    before the A/B, only these backend suites (a
#                                    gtest filter; TEST=1 runs the whole test stage);
#                                    its ':'-separated patterns run one process each,
#                                    in the order given, within TEST_TIME together
#   ROUNDS=2 ...                     each value twice, interleaved (the spread of one value)
#   BASE_ARGS='--plan-timing step' ...  more kiln bench arguments for every run
#
# Output in $OUT (default out/gpu-ab): ab.md (the tables) and runs.tgz (every run's
# markdown and JSON).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/out/gpu-ab}
mkdir -p "$OUT/runs"
FLAG=${FLAG:?set FLAG to a kiln bench option without its dashes}
VALUES=${VALUES:?set VALUES to a comma-separated list}
OPS=${OPS:-.}
ROUNDS=${ROUNDS:-1}
WORKLOADS=${WORKLOADS:-"sd15-512:--arch sd15 --what unet,vae --size 512;vae-1024:--arch sd15 --what vae --size 1024 --reps 5;sdxl-1024:--arch sdxl --what unet --size 1024"}
COMMIT=${COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  stages=build
  [ "${TEST:-0}" = 1 ] && stages=build,test
  STAGES=$stages BUDGET=${BUDGET:-420} OUT="$OUT/check" COMMIT=$COMMIT PACK_LOGS=1 \
    scripts/gpu-check.sh \
    >"$OUT/check.txt" 2>&1
  grep -E "built|FAILED|passed|failed|components" "$OUT/check.txt"
fi
KILN=build-gpu/bin/kiln
if [ ! -x "$KILN" ]; then
  echo "gpu-ab: no $KILN; the build's log ends:" >&2
  tail -30 "$OUT/check.txt" >&2 2>/dev/null
  exit 1
fi

if [ -n "${TEST_FILTER:-}" ]; then
  # The suites the flag's code paths need, not the whole stage: the A/B keeps its time.
  # One process a pattern, in the order given: gtest runs one filter's suites in its own
  # order, so a time limit would cut the last of them whatever the order asked (v39).
  : >"$OUT/tests.txt"
  test_end=$((SECONDS + ${TEST_TIME:-120}))
  IFS=':' read -r -a patterns <<<"$TEST_FILTER"
  for pattern in "${patterns[@]}"; do
    t=$((test_end - SECONDS))
    if [ "$t" -lt 5 ]; then
      echo "gpu-ab: no time for tests $pattern"
      continue
    fi
    before=$(grep -cE '^\[       OK \]' "$OUT/tests.txt")
    timeout "$t" build-gpu/bin/kiln_backend_tests --gtest_filter="$pattern" >>"$OUT/tests.txt" 2>&1
    rc=$?
    echo "gpu-ab: tests $pattern: exit $rc; $(($(grep -cE '^\[       OK \]' "$OUT/tests.txt") - before)) ok"
  done
  grep -E "^\[  FAILED  \]|: Failure" "$OUT/tests.txt" | head -20
fi

export KILN_PLAN_CACHE=${KILN_PLAN_CACHE:-$(mktemp -d /tmp/kiln-plans.XXXXXX)}
IFS=',' read -r -a values <<<"$VALUES"
IFS=';' read -r -a workloads <<<"$WORKLOADS"
for ((round = 1; round <= ROUNDS; ++round)); do
  for w in "${workloads[@]}"; do
    name=${w%%:*}
    read -r -a args <<<"${w#*:}"
    for v in "${values[@]}"; do
      echo "gpu-ab: $name ${BASE_ARGS:+$BASE_ARGS }--$FLAG $v (round $round)"
      # shellcheck disable=SC2086  # BASE_ARGS: words, as on a command line
      timeout 200 "$KILN" bench "${args[@]}" ${BASE_ARGS:-} --per-shape --commit "$COMMIT" "--$FLAG" "$v" \
        --json "$OUT/runs/$name-$v-$round.json" >"$OUT/runs/$name-$v-$round.md" 2>&1 ||
        echo "gpu-ab: $name --$FLAG $v failed: $(tail -2 "$OUT/runs/$name-$v-$round.md")"
    done
  done
done

python3 - "$OUT/runs" "$FLAG" "$OPS" "$ROUNDS" "${values[@]}" <<'EOF' | tee "$OUT/ab.md"
import glob, os, re, sys
runs, flag, ops, rounds, values = sys.argv[1], sys.argv[2], re.compile(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
totals, peaks, per_op = {}, {}, {}
for path in sorted(glob.glob(os.path.join(runs, "*.md"))):
    stem = os.path.basename(path)[:-3]
    # <name>-<value>-<round>, where a value may hold dashes itself (two-launch).
    rest, rnd = stem.rsplit("-", 1)
    value = max((v for v in values if rest.endswith("-" + v)), key=len, default=None)
    if value is None:
        continue
    name = rest[: -len(value) - 1]
    col = value if rounds == 1 else f"{value} #{rnd}"
    # Rows by the bench's workload, prefixed with the run's own name where that differs
    # (two runs of one workload with different arguments stay apart).
    label = lambda w: w if w.startswith(name) else f"{name} {w}"
    section = None
    for line in open(path):
        m = re.match(r"\| (\S+) \| \d+ \| \d+ \| \S+ \| (eager|graph) \| ([\d.]+) \|.* \| ([\d.]+) \|$",
                     line.rstrip())
        if m:
            totals.setdefault((label(m[1]), m[2]), {})[col] = float(m[3])
            peaks.setdefault((label(m[1]), m[2]), {})[col] = float(m[4])
            continue
        m = re.match(r"per-op: (\S+) batch", line)
        if m:
            section = label(m[1])
            continue
        m = re.match(r"\| (.+?) \| (\d+) \| ([\d.]+) \| [\d.]+ \|", line)
        if m and section and ops.search(m[1]):
            per_op.setdefault((section, m[1], m[2]), {})[col] = float(m[3])
cols = [v if rounds == 1 else f"{v} #{r}" for r in range(1, rounds + 1) for v in values]
print(f"\nkiln bench --{flag}: " + ", ".join(values) + " (ms, and the row's peak MiB; per op: graph replay with event nodes)\n")
print("| workload | mode | " + " | ".join(cols) + " | " + " | ".join(f"MiB {c}" for c in cols) + " |")
print("|---|---|" + "---|" * (2 * len(cols)))
for (w, mode), row in sorted(totals.items()):
    peak = peaks.get((w, mode), {})
    print(f"| {w} | {mode} | " + " | ".join(f"{row[c]:.3f}" if c in row else "–" for c in cols)
          + " | " + " | ".join(f"{peak[c]:.0f}" if c in peak else "–" for c in cols) + " |")
print("\n| workload | op and shape | calls | " + " | ".join(cols) + " |")
print("|---|---|---|" + "---|" * len(cols))
for (w, op, calls), row in sorted(per_op.items()):
    print(f"| {w} | {op} | {calls} | " + " | ".join(f"{row[c]:.3f}" if c in row else "–" for c in cols) + " |")
EOF
tar -C "$OUT" -czf "$OUT/runs.tgz" runs && rm -rf "$OUT/runs"
