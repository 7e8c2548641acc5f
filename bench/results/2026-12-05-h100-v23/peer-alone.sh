#!/usr/bin/env bash
# v23 call 2: the peer alone, to check what gpu-check's peer jobs (tools/py/peer_jobs.py)
# report. Each workload runs as the shared benchmark runs it, one process at a time with
# nothing else on the GPU or the CPU: torch.compile's autotuning then has the machine to
# itself, which in the check it shares with kiln's build, tests and the other jobs. Run
# on the machine that ran call 1, right after it, and compare with call 1's table.
# Run from the repository root: bash bench/results/2026-12-05-v23/peer-alone.sh
set -u
OUT=${OUT:-$PWD/out/v23-call2}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
start=$(date +%s)
run() {  # workload mode seconds
  local t0=$(date +%s)
  timeout "$3" python3 .peer/bench_diffusers.py "$1" --modes "$2" --json "$OUT/$1-$2.json" \
    >"$OUT/$1-$2.log" 2>&1
  echo "peer-alone: $1 $2 rc=$? $(( $(date +%s) - t0 )) s (at +$(( $(date +%s) - start )))"
  grep -E "^\| $1 " "$OUT/$1-$2.log"
}
run sd15-unet graphs 200
run sdxl-unet graphs 230
run vae-512 compile 120
