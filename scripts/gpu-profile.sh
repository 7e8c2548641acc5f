#!/usr/bin/env bash
# Nsight Compute on the GPU machine in one call: builds kiln (the build stage of
# scripts/gpu-check.sh, so with the same dependencies), runs one `kiln bench`
# workload under ncu on the kernels KERNELS names, and prints a table per launch and
# one per kernel and launch shape (tools/py/ncu_table.py). ncu flushes the caches
# and locks the clocks for each kernel it profiles: compare its times with each
# other, not with kiln bench's.
#
#   KERNELS='group_norm' BENCH='--arch sd15 --what vae --size 1024' scripts/gpu-profile.sh
#   SECTIONS='MemoryWorkloadAnalysis WarpStateStats' ...  also these ncu sections, for
#                                                 SECTION_COUNT launches (default 4)
#   COUNT=80 ...                                  launches profiled (default 60)
#   RUN_ENV='NAME=value ...' ...                  environment of the profiled process
#   SKIP_BUILD=1 ...                              use build-gpu/ as it is
#   WARM=1 ...                                    run the bench once first, so that the
#                                                 profiled run finds its plans on disk
#   METRICS=gpu__time_duration.sum ...            other metrics than the default set
#   NCU_ARGS='--cache-control none --clock-control none' ...  more ncu arguments (these
#                                                 two: each kernel as it runs in the pass)
#   TABLE_ARGS='--from-last timestep' ...         arguments of tools/py/ncu_table.py
#
# Output in $OUT (default out/gpu-profile): ncu.csv, table.md, ncu.log and, with
# SECTIONS, sections.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu-profile}
mkdir -p "$OUT"
KERNELS=${KERNELS:?set KERNELS to a regular expression of kernel names}
BENCH=${BENCH:---arch sd15 --what unet --size 512}
COUNT=${COUNT:-60}
DEFAULT_METRICS=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
DEFAULT_METRICS+=,lts__t_sector_hit_rate.pct,sm__warps_active.avg.pct_of_peak_sustained_active
DEFAULT_METRICS+=,launch__registers_per_thread
METRICS=${METRICS:-$DEFAULT_METRICS}
command -v ncu >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
command -v ncu >/dev/null || { echo "gpu-profile: no ncu on this machine" >&2; exit 1; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  STAGES=build OUT="$OUT/check" scripts/gpu-check.sh >"$OUT/build.txt" 2>&1
fi
KILN=build-gpu/bin/kiln
if [ ! -x "$KILN" ]; then
  echo "gpu-profile: no $KILN; the build's log ends:" >&2
  tail -30 "$OUT/build.txt" >&2 2>/dev/null
  exit 1
fi

# One eager pass after the bench's warm-up: graphs would hide the kernels' launches.
read -r -a bench_args <<<"$BENCH"
read -r -a run_env <<<"${RUN_ENV:-}"
read -r -a ncu_args <<<"${NCU_ARGS:-}"
read -r -a table_args <<<"${TABLE_ARGS:-}"
if [ "${WARM:-0}" = 1 ]; then
  env "${run_env[@]}" "$KILN" bench "${bench_args[@]}" --reps 1 --no-graphs >"$OUT/warm.txt" 2>&1
fi
echo "gpu-profile: ncu on /$KERNELS/ in kiln bench $BENCH (${COUNT} launches)"
env "${run_env[@]}" ncu --csv "${ncu_args[@]}" --kernel-name "regex:$KERNELS" --launch-count "$COUNT" \
  --metrics "$METRICS" "$KILN" bench "${bench_args[@]}" --reps 1 --no-graphs \
  >"$OUT/ncu.csv" 2>"$OUT/ncu.log"
status=$?
python3 tools/py/ncu_table.py "$OUT/ncu.csv" "${table_args[@]}" >"$OUT/table.md" || {
  echo "gpu-profile: ncu exited $status; its log ends:" >&2
  tail -20 "$OUT/ncu.log" >&2
  exit 1
}
cat "$OUT/table.md"

if [ -n "${SECTIONS:-}" ]; then
  section_args=()
  for s in $SECTIONS; do section_args+=(--section "$s"); done
  env "${run_env[@]}" ncu "${section_args[@]}" --kernel-name "regex:$KERNELS" \
    --launch-count "${SECTION_COUNT:-4}" "$KILN" bench "${bench_args[@]}" --reps 1 --no-graphs \
    >"$OUT/sections.txt" 2>&1
  echo
  echo "gpu-profile: sections ($SECTIONS) of the first ${SECTION_COUNT:-4} launches in $OUT/sections.txt"
fi
