#!/usr/bin/env bash
# One command for the GPU machine: builds kiln with the CUDA backend, runs the
# backend-op tests and the goldens on CUDA, times kiln and the diffusers peer
# (.peer/bench_diffusers.py, a copy of shared/peer/) on the same shapes in the
# same run, and prints one markdown table with the ratios. Fits in one
# 10-minute run: every stage has a time limit and the table comes last either way; the
# peer's models are built and compiled in the background from the start and timed, each
# with the GPU alone, after kiln's bench (tools/py/peer_jobs.py).
#
#   scripts/gpu-check.sh                          everything
#   STAGES=build,test scripts/gpu-check.sh        a subset (build,test,fullsize,bench,peer)
#   FULL_SIZE_SEED=7 scripts/gpu-check.sh         the full-size check's weights and inputs
#   COMMIT=$(cat .peer/COMMIT) scripts/gpu-check.sh  the commit the table names: the GPU
#                                                 machine's copy may carry a stale .git
#   PEER_MODES=compile,graphs ...                 the peer's modes for the UNets (graphs);
#                                                 PEER_VAE_MODES for the VAEs (compile)
#   PEER_PARALLEL=3 ...                           peer jobs compiling at once
#   PEER_ONLY=vae-1024 ...                        the peer on these workloads alone
#   STAGES=peer scripts/gpu-check.sh              the peer alone, in a second call right
#                                                 after one without it, when its compiles
#                                                 do not fit beside the rest (a slow host:
#                                                 v13 reached no VAE compile); carry that
#                                                 call's out/gpu-check and the table joins
#                                                 both calls' numbers
#
# Logs, JSON and the table go to $OUT (default out/gpu-check). The peer needs
# diffusers: carry its wheel in .whl/ (installed into /tmp/site here). What the
# GPU machine's image lacks is made up here: without a system CBLAS, cblas_sgemm
# is forwarded to the OpenBLAS inside numpy's wheel; an optional .peer/deps.tar.xz
# (headers and static libraries of nlohmann-json, GoogleTest, zlib, cuDNN's
# headers) covers the rest if a later image drops them.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out/gpu-check}
LOGS=$OUT/logs  # with PACK_LOGS=1, packed into logs.tgz at the end
mkdir -p "$LOGS"
STAGES=${STAGES:-build,test,fullsize,bench,peer}
BUDGET=${BUDGET:-570}   # seconds for the whole script, table included
BUILD=${BUILD_DIR:-$ROOT/build-gpu}
JOBS=${JOBS:-$(nproc)}
has_stage() { [[ ",$STAGES," == *",$1,"* ]]; }
log() { echo "[gpu-check +${SECONDS}s] $*"; }
left() { echo $((BUDGET - SECONDS)); }
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
COMMIT=${COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || cat .peer/COMMIT 2>/dev/null || echo unknown)}
# A fresh plan cache each run: the timings measure the plans this build makes, not
# ones an earlier build left in ~/.cache (whose version stamp a copied tree may share).
export KILN_PLAN_CACHE=${KILN_PLAN_CACHE:-$(mktemp -d /tmp/kiln-plans.XXXXXX)}

log "commit $COMMIT; output in $OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
  --format=csv,noheader 2>&1 | sed 's/^/  gpu: /'
echo "  $(nvcc --version 2>&1 | tail -1); $(cmake --version | head -1); $(nproc) cores"

# --- dependencies -----------------------------------------------------------
# What the image lacks comes from .peer/deps.tar.xz (headers and static
# libraries of nlohmann-json, GoogleTest, zlib and cuDNN's headers).
DEPS=/tmp/kiln-deps/prefix
PREFIXES=()
if [ -f .peer/deps.tar.xz ]; then
  mkdir -p /tmp/kiln-deps && tar -C /tmp/kiln-deps -xJf .peer/deps.tar.xz
fi
# kiln serve needs cpp-httplib, which the GPU machine lacks: it is built only when
# Debian's package is carried, unpacked under .deps/ (scripts/gpu-serve-bench.sh).
SERVE=OFF
if [ -f .deps/pkgconfig/cpp-httplib.pc ]; then
  export PKG_CONFIG_PATH=$ROOT/.deps/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  SERVE=ON
fi
CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Release -DKILN_CPU_GEMM=cblas -DCMAKE_CUDA_ARCHITECTURES=90a
            -DKILN_CUDA=ON -DKILN_SERVE=$SERVE)
if [ ! -f /usr/include/nlohmann/json.hpp ] || [ ! -f /usr/include/gtest/gtest.h ]; then
  log "using carried nlohmann-json/GoogleTest"; PREFIXES+=("$DEPS")
fi
if [ ! -f /usr/include/zlib.h ]; then
  log "using carried zlib"; CMAKE_ARGS+=(-DZLIB_ROOT="$DEPS")
  PREFIXES+=("$DEPS")
fi
[ ${#PREFIXES[@]} -gt 0 ] && CMAKE_ARGS+=(-DCMAKE_PREFIX_PATH="$DEPS")
if ls /usr/include/cblas.h /usr/include/*/cblas.h /usr/include/openblas/cblas.h >/dev/null 2>&1; then
  echo "  cblas: system"
else
  # No CBLAS headers: forward cblas_sgemm to the OpenBLAS inside numpy's wheel.
  NP_BLAS=$(python3 -c "import numpy, glob, os; d = os.path.dirname(numpy.__file__); print((glob.glob(d + '.libs/*openblas*.so*') + glob.glob(d + '/../scipy_openblas*/lib/*.so*'))[0])" 2>/dev/null)
  SYM=$(nm -D --defined-only "$NP_BLAS" 2>/dev/null | awk '{print $NF}' |
    grep -E '^(scipy_)?cblas_sgemm(64_?)?$' | head -1)
  if [ -n "$SYM" ]; then
    log "no system CBLAS: using $SYM from $NP_BLAS"
    INT=int; [[ "$SYM" == *64* ]] && INT=long
    mkdir -p /tmp/kiln-cblas/include /tmp/kiln-cblas/lib
    cat >/tmp/kiln-cblas/include/cblas.h <<EOF
#pragma once
#ifdef __cplusplus
extern "C" {
#endif
enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 };
void cblas_sgemm(enum CBLAS_ORDER o, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int m, int n,
                 int k, float alpha, const float* a, int lda, const float* b, int ldb, float beta,
                 float* c, int ldc);
#ifdef __cplusplus
}
#endif
EOF
    cat >/tmp/kiln-cblas/shim.c <<EOF
#include "cblas.h"
void $SYM(int, int, int, $INT, $INT, $INT, float, const float*, $INT, const float*, $INT, float, float*, $INT);
void cblas_sgemm(enum CBLAS_ORDER o, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int m, int n,
                 int k, float alpha, const float* a, int lda, const float* b, int ldb, float beta,
                 float* c, int ldc) {
  $SYM(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
EOF
    cc -O2 -shared -fPIC -I/tmp/kiln-cblas/include /tmp/kiln-cblas/shim.c "$NP_BLAS" \
      -Wl,-rpath,"$(dirname "$NP_BLAS")" -o /tmp/kiln-cblas/lib/libopenblas.so &&
      CMAKE_ARGS+=(-DCBLAS_INCLUDE_DIR=/tmp/kiln-cblas/include
                   -DCBLAS_LIBRARY=/tmp/kiln-cblas/lib/libopenblas.so)
    # That OpenBLAS runs its own threads and warns (and may hang) when called
    # inside kiln's OpenMP loops, as the CPU reference does: one thread.
    export OPENBLAS_NUM_THREADS=1
  else
    log "no CBLAS found (the build will fail at configure)"
  fi
fi
# cuDNN: only inside torch's wheel on the GPU machine.
CUDNN_ROOT=$(python3 - <<'EOF' 2>/dev/null
import importlib, os
m = importlib.import_module("nvidia.cudnn")
print(list(m.__path__)[0])
EOF
)
if [ -n "$CUDNN_ROOT" ] && [ -d "$CUDNN_ROOT/lib" ]; then
  if [ ! -f "$CUDNN_ROOT/include/cudnn.h" ] && [ -d "$DEPS/cudnn/include" ]; then
    mkdir -p /tmp/kiln-cudnn && ln -sfn "$DEPS/cudnn/include" /tmp/kiln-cudnn/include &&
      ln -sfn "$CUDNN_ROOT/lib" /tmp/kiln-cudnn/lib && CUDNN_ROOT=/tmp/kiln-cudnn
  fi
  export LD_LIBRARY_PATH="$CUDNN_ROOT/lib:${LD_LIBRARY_PATH:-}"
  CMAKE_ARGS+=(-DKILN_CUDNN_ROOT="$CUDNN_ROOT")
  echo "  cudnn: $CUDNN_ROOT ($(ls "$CUDNN_ROOT"/lib | grep -c so) libraries)"
fi

# The peer and the full-size references need diffusers: its wheel is carried in .whl/.
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
need_diffusers() {
  python3 -c "import diffusers" 2>/dev/null ||
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
}

# --- the peer's compiles, ahead of its timings ----------------------------------
# torch.compile spends one to two minutes a model in Inductor and Triton. Compiled
# after kiln's bench, the peer's runs left no time for the VAEs (v18-v22; v22 also had
# a warm-up filling Inductor's caches beside the tests, and its timed runs still took
# 79 s for SDXL and 97 s for SD1.5 compiling from them). So each of the peer's
# measurements is a job of its own that starts now, builds and compiles its model
# while kiln builds and tests (the GPU's timings do not matter then), and waits; the
# jobs are stopped while kiln's bench runs, and after it each ready job is timed with
# every other one stopped. What is timed is the peer's script's own code
# (tools/py/peer_jobs.py says how). The targets' modes come first in the list: the
# UNets' compile + graphs, SDXL's peak memory, the VAEs' compile; eager (clip-l's one
# comparison) last.
PEER_PID=
PEER_JOBS_DIR=$LOGS/peer-jobs
if has_stage peer && [ ! -f .peer/bench_diffusers.py ]; then
  log "peer: no .peer/bench_diffusers.py (carry a copy of shared/peer: scripts/gpu-carry.sh); no peer columns"
elif has_stage peer; then
  need_diffusers
  # An earlier call's rows must not join this one's, nor its job files start timings.
  rm -rf "$LOGS/peer.log" "$LOGS/peer-control.log" "$PEER_JOBS_DIR"
  peer_jobs=()
  add_peer_job() {  # workload, modes (comma-separated), [peak]
    local w=$1 mode
    [ -n "${PEER_ONLY:-}" ] && [[ ",$PEER_ONLY," != *",$w,"* ]] && return
    for mode in ${2//,/ }; do peer_jobs+=("$w:$mode${3:+:peak}"); done
  }
  add_peer_job sdxl-unet "${PEER_MODES:-graphs}"
  add_peer_job sd15-unet "${PEER_MODES:-graphs}"
  add_peer_job sdxl-unet eager peak
  add_peer_job vae-512 "${PEER_VAE_MODES:-compile}"
  add_peer_job vae-1024 "${PEER_VAE_MODES:-compile}"
  add_peer_job vae-1024 eager peak
  add_peer_job sd15-unet eager peak
  add_peer_job vae-512 eager
  add_peer_job clip-l eager
  if [ ${#peer_jobs[@]} -gt 0 ]; then
    log "peer: ${#peer_jobs[@]} jobs build and compile in the background"
    # Below kiln's build and tests in CPU priority, and in threads: kiln's CPU
    # references are OpenMP loops over every core, which one busy core slows down.
    OMP_NUM_THREADS=4 TORCHINDUCTOR_COMPILE_THREADS=8 nice -n 10 python3 tools/py/peer_jobs.py control \
      --peer .peer --logs "$PEER_JOBS_DIR" --deadline $(( $(date +%s) + $(left) - 20 )) \
      --parallel "${PEER_PARALLEL:-3}" "${peer_jobs[@]}" >"$LOGS/peer.log" 2>"$LOGS/peer-control.log" &
    PEER_PID=$!
    trap '[ -n "$PEER_PID" ] && kill -TERM "$PEER_PID" 2>/dev/null' EXIT
  fi
fi
peer_signal() {  # USR1: stop the jobs (kiln's bench is next); USR2: time them
  [ -n "$PEER_PID" ] && kill -0 "$PEER_PID" 2>/dev/null || return 1
  local i
  for i in $(seq 50); do [ -f "$PEER_JOBS_DIR/started" ] && break; sleep 0.2; done  # handlers set
  kill -"$1" "$PEER_PID"
}

# --- build ------------------------------------------------------------------
KILN=$BUILD/bin/kiln
TESTS=$BUILD/bin/kiln_backend_tests
if has_stage build; then
  # Time kept back for the later stages; a build-only call (gpu-ab.sh, gpu-profile.sh,
  # one-off scripts with a small BUDGET) keeps none: v13 lost a call to a build stopped
  # at BUDGET - 120 = 30 s.
  build_reserve=120
  [ "$STAGES" = build ] && build_reserve=5
  log "configure and build ($JOBS jobs)"
  if cmake -S . -B "$BUILD" -G Ninja "${CMAKE_ARGS[@]}" >"$LOGS/configure.log" 2>&1 &&
    timeout $(($(left) - build_reserve)) cmake --build "$BUILD" -j "$JOBS" --target kiln kiln_backend_tests \
      >"$LOGS/build.log" 2>&1; then
    log "built"
  else
    log "BUILD FAILED"; tail -30 "$LOGS/configure.log" "$LOGS/build.log"
  fi
  grep -E "kiln:|CUDA" "$LOGS/configure.log" | sed 's/^/  /'
fi

# --- tests ------------------------------------------------------------------
SUMMARY=$OUT/summary.txt
summarize_tests() {  # log file, label
  local passed failed
  passed=$(grep -c '^\[       OK \]' "$1"); failed=$(grep -cE '^\[  FAILED  \].*\([0-9]+ ms\)$' "$1")
  # Suites cut short (time limit, crash) or never started: the counts above miss them.
  local cut note=""; cut=$(grep -cE '^suite .*: exit|^no time for' "$1")
  [ "$cut" -gt 0 ] && note=", $cut suites cut short or not run"
  echo "$2: $passed passed, $failed failed$note" | tee -a "$SUMMARY"
  grep -E '^suite .*: exit|^no time for' "$1" | head -10
  grep -E '^\[  FAILED  \].*\([0-9]+ ms\)$' "$1" | head -20
}
# One process per suite, so that a crash (a bad address, say) costs one suite.
run_suites() {  # log, time limit, filters...
  local log=$1 limit=$2; shift 2
  local start=$SECONDS
  touch "$log"
  for f in "$@"; do
    local t=$((limit - (SECONDS - start))); [ "$t" -lt 5 ] && { echo "no time for $f" >>"$log"; continue; }
    local before; before=$(wc -l <"$log")
    timeout "$t" "$TESTS" --gtest_filter="$f" >>"$log" 2>&1 || echo "suite $f: exit $?" >>"$log"
    # A bad address poisons the context: find the kernel with compute-sanitizer.
    if tail -n +"$before" "$log" | grep -q "illegal\|misaligned\|exit 13[4-9]"; then
      echo "suite $f under compute-sanitizer:" >>"$log"
      timeout 90 compute-sanitizer --print-limit 5 "$TESTS" --gtest_filter="$f" 2>&1 |
        grep -v "^\[" | head -60 >>"$log"
    fi
  done
}
# Seconds for a step of the correctness lane: its own cap, and the lane's end.
lane_time() { local t=$((LANE_END - SECONDS)); [ "$t" -gt "$1" ] && t=$1; echo $((t < 5 ? 5 : t)); }

goldens_stage() {
  log "goldens on CUDA (f16, bf16)"
  run_suites "$LOGS/golden-cuda.log" "$(lane_time 120)" '*sd1_*' '*sd2v_*' '*sdxl_*'
  summarize_tests "$LOGS/golden-cuda.log" "goldens on CUDA"
  grep -E "^\[ (sd1|sd2v|sdxl) " "$LOGS/golden-cuda.log" | sort -t' ' -k2,3 | awk '
    /nmse/ {n[$2" "$3]++; v=$NF+0; if (v > worst[$2" "$3]) worst[$2" "$3]=v}
    /PSNR/ {p[$2" "$3]++; v=$(NF-1)+0; if (!($2" "$3 in lo) || v < lo[$2" "$3]) lo[$2" "$3]=v}
    END {for (k in n) printf "  %s: %d components, worst nmse %.3g; %d images, lowest PSNR %.1f dB\n", k, n[k], worst[k], p[k], lo[k]}'
}

# Random-weight UNets with the real SD1.5 and SDXL architectures: diffusers in fp32
# against kiln in fp16 on the same weights (tests/backend/test_full_size.cpp).
fullsize_stage() {
  local seed=${FULL_SIZE_SEED:-0} fs=${FULL_SIZE_DIR:-/tmp/kiln-fullsize}
  log "full-size references (seed $seed)"
  need_diffusers
  for arch in sd15 sdxl; do
    rm -rf "${fs:?}/$arch"
    timeout "$(lane_time 120)" python3 tools/py/make_full_size_reference.py --arch $arch \
      --seed "$seed" --out "$fs/$arch" >>"$LOGS/fullsize.log" 2>&1 ||
      log "reference for $arch failed (see fullsize.log)"
  done
  grep -E "reference in|Error|error" "$LOGS/fullsize.log" | sed 's/^/  /' | head -8
  KILN_FULL_SIZE_DIR=$fs timeout "$(lane_time 120)" "$TESTS" --gtest_filter='Arch/FullSize.*' \
    >"$LOGS/fullsize-test.log" 2>&1
  summarize_tests "$LOGS/fullsize-test.log" "full-size (seed $seed)"
  grep -E "^\[ full-size|SKIPPED|Failure" "$LOGS/fullsize-test.log" | sed 's/^/  /' |
    tee -a "$SUMMARY"
  rm -rf "$fs"
}

# The goldens and the full-size check run beside the backend-op suites, in a lane of
# their own: they spend their time in Python, in writing and reading the full-size
# weights (5 GB for SDXL) and on the GPU, where the suites spend theirs in the CPU
# references. In sequence the three took 280 s of v21's check (150 + 36 + 94) and left
# the peer too little. The lane ends by LANE_END whatever its steps' own caps say.
# The stage ends 240 s before the budget (kiln's bench, the peer's timings, the table)
# and takes 210 s at most, a third of what is left at least.
TEST_TIME=$(( $(left) - 240 )); [ $TEST_TIME -gt 210 ] && TEST_TIME=210
[ $TEST_TIME -lt $(( $(left) / 3 )) ] && TEST_TIME=$(( $(left) / 3 ))
LANE_END=$((SECONDS + TEST_TIME + 40))
LANE_PID=
if [ -x "$TESTS" ] && { has_stage test || has_stage fullsize; }; then
  (
    SUMMARY=$LOGS/summary-lane.txt
    export OMP_NUM_THREADS=4  # the suites' CPU references have the other cores
    has_stage test && goldens_stage
    has_stage fullsize && fullsize_stage
  ) >"$LOGS/lane.out" 2>&1 &
  LANE_PID=$!
fi
if has_stage test && [ -x "$TESTS" ]; then
  log "backend ops against the CPU reference (goldens and full size beside them)"
  # The suites whose CPU references take longest come last, so that a stage cut short
  # by its time loses the fewest suites.
  SUITES=('TestInputs.*' 'Elementwise.*' 'Runtime.*' 'PlanCache.*' 'Shapes/LayerNorm.*'
          'Shapes/AddLayerNorm.*' 'Shapes/Linear.*' 'Wide/Linear.*'
          'Shapes/LinearGeglu.*' 'Shapes/GroupNorm.*' 'Shapes/Conv2d.*' 'Shapes/NormConv2d.*' 'AttentionAuto.*'
          'AttentionSharedMemoryLimit.*' 'Conv2dSharedMemoryLimit.*' 'Shapes/Attention.*'
          'Shapes/UpsampleConv.*')
  # A suite added to the tests but not to this list would pass unseen (LinearGeglu did;
  # NormConv2d did in v28, its warning scrolled away): named here and in the summary.
  for suite in $("$TESTS" --gtest_list_tests | grep -v '^ ' | grep '\.$'); do
    case " ${SUITES[*]} Golden/CudaGolden.* Arch/FullSize.* " in
      *" $suite* "*) ;;
      *)
        log "WARNING: test suite $suite is not in gpu-check's list: add it"
        echo "WARNING: backend suite ${suite}* not run (not in gpu-check's list)" >>"$SUMMARY"
        ;;
    esac
  done
  # Four cores are left to the lane and the peer's jobs: an OpenMP loop over every core
  # waits for the one that shares its core (v22: every suite took twice its v18 time).
  (
    [ "$JOBS" -gt 8 ] && export OMP_NUM_THREADS=$((JOBS - 4))
    run_suites "$LOGS/backend-ops.log" "$TEST_TIME" "${SUITES[@]}"
  )
  summarize_tests "$LOGS/backend-ops.log" "backend ops"
  grep -E "nmse [0-9.e+-]+$|: Failure|^suite |exception|error|=====.*(Invalid|Address|at 0x)" "$LOGS/backend-ops.log" | head -40
  log "backend ops done"
fi
if [ -n "$LANE_PID" ]; then
  wait "$LANE_PID"
  cat "$LOGS/lane.out"
  [ -f "$LOGS/summary-lane.txt" ] && cat "$LOGS/summary-lane.txt" >>"$SUMMARY"
  log "goldens and full size done"
fi

# --- clocks -------------------------------------------------------------------
# nvidia-smi samples the SM clock and power draw while kiln's bench and the peer's
# timings run; the table ends with one line for each. Under long runs the GPU's
# power cap lowers the clock (SDXL's graph at about 1700 MHz of 1980, v32), and short
# timed runs can finish before it does: the line says at which clock the numbers came.
CLOCK_PID=
clocks_start() {  # file
  command -v nvidia-smi >/dev/null || return 0
  nvidia-smi --query-gpu=clocks.sm,power.draw,power.limit --format=csv,noheader,nounits \
    -lms 50 >"$1" 2>/dev/null &
  CLOCK_PID=$!
}
clocks_stop() {
  [ -n "$CLOCK_PID" ] || return 0
  kill "$CLOCK_PID" 2>/dev/null
  wait "$CLOCK_PID" 2>/dev/null
  CLOCK_PID=
}
trap 'clocks_stop; [ -n "$PEER_PID" ] && kill -TERM "$PEER_PID" 2>/dev/null' EXIT
clocks_line() {  # file, what: the samples drawing at least half the power limit (busy)
  [ -s "$1" ] || return 0
  python3 - "$1" "$2" <<'PY' >>"$SUMMARY"
import statistics, sys
busy, total = [], 0
for line in open(sys.argv[1]):
    try:
        mhz, watts, limit = (float(x) for x in line.split(","))
    except ValueError:
        continue
    total += 1
    if watts >= 0.5 * limit:
        busy.append((mhz, watts, limit))
if busy:
    mhz = [b[0] for b in busy]
    print(f"GPU during {sys.argv[2]}: SM clock median {statistics.median(mhz):.0f} MHz "
          f"(lowest {min(mhz):.0f}), power median {statistics.median(b[1] for b in busy):.0f} W "
          f"of {busy[0][2]:.0f}, over the {len(busy)} of {total} samples at half the limit or more")
PY
}

# --- kiln bench ---------------------------------------------------------------
if has_stage bench && [ -x "$KILN" ] && [ -n "$PEER_PID" ]; then
  if peer_signal USR1; then
    for i in $(seq 50); do [ -f "$PEER_JOBS_DIR/paused" ] && break; sleep 0.2; done
    sleep 1  # what the stopped jobs had queued on the GPU drains
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null | head -1)
    log "peer: jobs stopped for kiln's bench ($(grep -c ': ready' "$LOGS/peer-control.log") ready${used:+; GPU memory in use $used})"
  else
    log "peer: WARNING: the jobs' controller ended before kiln's bench; its log:"
    sed 's/^/  /' "$LOGS/peer-control.log"
    PEER_PID=
  fi
fi
if has_stage bench && [ -x "$KILN" ]; then
  log "kiln bench"
  rm -f "$LOGS"/kiln-*.json "$LOGS/kiln-bench.log"  # the table reads every kiln-*.json
  clocks_start "$LOGS/clocks-kiln.csv"
  run_bench() {  # name, then kiln bench arguments
    local name=$1; shift
    timeout $(( $(left) > 200 ? 150 : $(left) / 2 )) "$KILN" bench --commit "$COMMIT" \
      "--${PER_OP:-per-op}" \
      --json "$LOGS/kiln-$name.json" "$@" >>"$LOGS/kiln-bench.log" 2>&1 || log "kiln bench $name failed"
  }
  run_bench sd15 --arch sd15 --what unet,vae,text --size 512
  run_bench sdxl --arch sdxl --what unet --size 1024
  run_bench vae1024 --arch sd15 --what vae --size 1024 --reps 5
  run_bench e2e --arch sd15 --what e2e --size 512 --steps 30 --reps 3
  clocks_stop
  clocks_line "$LOGS/clocks-kiln.csv" "kiln's bench"
  grep -E "^\|" "$LOGS/kiln-bench.log" | grep -v "^| op\|^|---" | grep -E "eager|graph|e2e" | head -20
fi

# --- the peer -----------------------------------------------------------------
if peer_signal USR2; then
  log "peer: timing each job as it becomes ready, the others stopped"
  clocks_start "$LOGS/clocks-peer.csv"
  wait "$PEER_PID"
  PEER_PID=
  clocks_stop
  clocks_line "$LOGS/clocks-peer.csv" "the peer's timings"
  sed 's/^/  /' "$LOGS/peer-control.log"
elif [ -n "$PEER_PID" ]; then
  log "peer: the jobs' controller ended early; its log:"
  sed 's/^/  /' "$LOGS/peer-control.log"
  PEER_PID=
fi

# --- the table ----------------------------------------------------------------
python3 - "$LOGS" "$COMMIT" <<'EOF' | tee "$OUT/table.md"
import glob, json, os, re, sys
out, commit = sys.argv[1], sys.argv[2]
kiln = {}
gpu = "?"
for f in sorted(glob.glob(os.path.join(out, "kiln-*.json"))):
    for r in json.load(open(f))["rows"]:
        gpu = r["gpu"]
        name = r["workload"] if not r["mode"].startswith("e2e") else f'{r["workload"]}-{r["size"]}-{r["steps"]}steps'
        kiln.setdefault((name, r["batch"]), {})[r["mode"]] = r
peer = {}
peer_peak = {}
peer_gpu = ""
if os.path.exists(os.path.join(out, "peer.log")):
    for line in open(os.path.join(out, "peer.log")):
        m = re.match(r"\| (\S+) \| (\d+) \| peak \| (\d+) \|", line)
        if m:
            peer_peak[(m[1], int(m[2]))] = float(m[3])
            continue
        m = re.match(r"\| (\S+) \| (\d+) \| (\w+) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            peer.setdefault((m[1], int(m[2])), {})[m[3]] = float(m[4])
        m = re.search(r"\((.*), torch (.*)\)", line)
        if m and line.startswith("| workload"):
            peer_gpu = f"{m[1]}, torch {m[2]}"
targets = {"sd15-unet": "≤ 3.4 ms, ≥ 2.0× graphs", "sdxl-unet": "≤ 22 ms, ≥ 1.5× graphs",
           "vae-512": "≤ 4.5 ms, ≥ 1.75× compile", "vae-1024": "≤ 20 ms, ≥ 1.75× compile",
           "sd15-e2e-512-30steps": "≤ 120 ms"}
print(f"\nkiln vs diffusers, same run: {gpu} (peer: {peer_gpu or 'not run'}), fp16, commit {commit}\n")
print("| workload | batch | kiln eager ms | kiln graph ms | GFLOP | kiln TFLOP/s | kiln peak MiB | peer eager | peer compile | peer graphs | peer peak MiB | speed-up vs peer's best | target |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
def fmt(v):
    return f"{v:.2f}" if isinstance(v, float) else "–"
for key in sorted(set(kiln) | set(peer)):
    k, p = kiln.get(key, {}), peer.get(key, {})
    eager = k.get("eager", k.get("e2e", {})).get("ms")
    graph = k.get("graph", k.get("e2e-graph", {})).get("ms")
    best_k = min([v for v in (eager, graph) if v is not None], default=None)
    best_p = min(p.values(), default=None)
    row = k.get("eager") or k.get("e2e") or {}
    gflop = row.get("gflop", 0.0)
    ratio = f"{best_p / best_k:.2f}× (vs {min(p, key=p.get)})" if best_k and best_p else "–"
    peak_p = f"{peer_peak[key]:.0f}" if key in peer_peak else "–"
    cells = [key[0], str(key[1]), fmt(eager), fmt(graph), f"{gflop:.0f}",
             f"{(gflop / best_k if best_k and gflop else 0):.0f}", f"{row.get('peak_mib', 0):.0f}",
             fmt(p.get("eager")), fmt(p.get("compile")), fmt(p.get("graphs")), peak_p, ratio,
             targets.get(key[0], "")]
    print("| " + " | ".join(cells) + " |")
EOF
[ -f "$SUMMARY" ] && cat "$SUMMARY"
if [ -n "${PACK_LOGS:-}" ]; then tar -C "$OUT" -czf "$OUT/logs.tgz" logs && rm -rf "$LOGS"; fi
log "done"
