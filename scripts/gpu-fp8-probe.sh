#!/usr/bin/env bash
# fp8 (E4M3) GEMMs through cuBLASLt beside f16 on the UNets' Linear shapes, with the
# per-row quantization pass they would need, on the GPU machine in one call
# (tools/probe/fp8_gemm_probe.cu says what and why). Nothing to carry.
#
#   (device) scripts/gpu-fp8-probe.sh
#
# Output in $OUT (default out/fp8-probe): build.txt and table.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/fp8-probe}
mkdir -p "$OUT"
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a tools/probe/fp8_gemm_probe.cu \
  -lcublasLt -o /tmp/kiln-fp8-probe >"$OUT/build.txt" 2>&1 || {
  echo "gpu-fp8-probe: build failed; its log ends:" >&2
  tail -20 "$OUT/build.txt" >&2
  exit 1
}
timeout "${PROBE_TIMEOUT:-300}" /tmp/kiln-fp8-probe | tee "$OUT/table.md"
