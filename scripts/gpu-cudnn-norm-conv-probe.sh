#!/usr/bin/env bash
# Whether cuDNN's graph API can run a GroupNorm's apply (scale, shift, SiLU) as the
# prologue of the next 3×3 convolution faster than the apply pass plus the legacy
# convolution, on the VAE decoder's shapes, on the GPU machine in one call
# (tools/probe/cudnn_norm_conv_probe.cu says what and why). Needs the frontend's
# headers under .deps/ (carry .cache and unpack .cache/deps.tar.xz first).
#
#   (device) tar xJf .cache/deps.tar.xz && scripts/gpu-cudnn-norm-conv-probe.sh
#
# Output in $OUT (default out/cudnn-norm-conv-probe): build.txt, table.md, variants.txt
# (each prologue variant's plans per shape), stdout.txt and stderr.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/cudnn-norm-conv-probe}
mkdir -p "$OUT"
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
FRONTEND=$(ls -d .deps/cudnn-frontend-*/include 2>/dev/null | head -1)
[ -n "$FRONTEND" ] || { echo "no cuDNN frontend headers under .deps/" >&2; exit 1; }
CUDNN_ROOT=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null)
ARGS=()
if [ -n "$CUDNN_ROOT" ]; then
  ARGS=(-I"$CUDNN_ROOT/include" -L"$CUDNN_ROOT/lib" -Xlinker -rpath -Xlinker "$CUDNN_ROOT/lib")
  export LD_LIBRARY_PATH="$CUDNN_ROOT/lib:${LD_LIBRARY_PATH:-}"
fi
nvcc -std=c++20 -O2 -gencode arch=compute_90a,code=sm_90a -DCUDNN_FRONTEND_SKIP_JSON_LIB=1 \
  -isystem "$FRONTEND" "${ARGS[@]}" tools/probe/cudnn_norm_conv_probe.cu -l:libcudnn.so.9 -lnvrtc \
  -o /tmp/kiln-cudnn-norm-conv-probe >"$OUT/build.txt" 2>&1 || {
  echo "gpu-cudnn-norm-conv-probe: build failed; its log ends:" >&2
  tail -20 "$OUT/build.txt" >&2
  exit 1
}
# The frontend's warnings (why a plan or a graph is not supported) go to stdout too:
# the table is the lines that start with "|".
timeout "${PROBE_TIMEOUT:-300}" /tmp/kiln-cudnn-norm-conv-probe >"$OUT/stdout.txt" 2>"$OUT/stderr.txt"
rc=$?
grep -E '^(\||[A-Z].*cuDNN)' "$OUT/stdout.txt" >"$OUT/table.md"
grep -E '^  [0-9]' "$OUT/stderr.txt" >"$OUT/variants.txt"
cat "$OUT/table.md" "$OUT/variants.txt"
exit $rc
