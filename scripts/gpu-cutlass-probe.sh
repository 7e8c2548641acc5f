#!/usr/bin/env bash
# CUTLASS's Hopper GEMM kernels beside cuBLAS on the UNets' GEMM shapes, on the GPU
# machine in one call (tools/probe/cutlass_gemm_probe.cu says what and why). It needs
# CUTLASS's headers, those of the deps archive (scripts/gpu-carry.sh; the call begins
# with `tar xJf .cache/deps.tar.xz`), or the pinned wheel in the ignored .cutlass/:
#
#   python3 -m pip download --no-deps --only-binary=:all: -d .cutlass nvidia-cutlass==4.2.0.0
#   (device) scripts/gpu-cutlass-probe.sh        with carry [".cutlass"]
#
# Output in $OUT (default out/cutlass-probe): build.txt and table.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/cutlass-probe}
mkdir -p "$OUT"
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
# The headers: from the carried deps archive's .deps/ (scripts/gpu-carry.sh), else the
# wheel in .cutlass/.
if [ -f .deps/cutlass-4.2.0.0/include/cutlass/cutlass.h ]; then
  inc=(-I.deps/cutlass-4.2.0.0/include)
else
  wheel=$(ls .cutlass/nvidia_cutlass-4.2.0.0-*.whl 2>/dev/null | head -1)
  [ -n "$wheel" ] || { echo "gpu-cutlass-probe: no CUTLASS headers in .deps/ nor a 4.2.0.0 wheel in .cutlass/" >&2; exit 1; }
  src=/tmp/kiln-cutlass
  rm -rf "$src" && python3 -m zipfile -e "$wheel" "$src"
  I=$src/cutlass_library/source
  inc=(-I"$I/include" -I"$I/tools/util/include")
fi
echo "gpu-cutlass-probe: building (about a minute on 2 cores)"
nvcc -std=c++17 -O3 -DNDEBUG -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr \
  "${inc[@]}" tools/probe/cutlass_gemm_probe.cu -lcublas \
  -o /tmp/kiln-cutlass-probe >"$OUT/build.txt" 2>&1 || {
  echo "gpu-cutlass-probe: build failed; its log ends:" >&2
  tail -20 "$OUT/build.txt" >&2
  exit 1
}
grep -q "C7510" "$OUT/build.txt" && echo "gpu-cutlass-probe: ptxas serialised wgmma somewhere (C7510): see build.txt"
timeout "${PROBE_TIMEOUT:-240}" /tmp/kiln-cutlass-probe | tee "$OUT/table.md"
