#!/usr/bin/env bash
# kiln serve on the GPU machine: builds kiln with CUDA and the server (cpp-httplib
# carried as Debian's package, unpacked under .deps/; see below), checks one
# image with kiln generate --device cuda, then runs bench/serve_bench.py against
# the server in each batching mode. Output under $OUT.
#
# Here, once:  mkdir -p .deps/debs && (cd .deps/debs && apt-get download
#   libcpp-httplib0.11 libcpp-httplib-dev libbrotli1 libbrotli-dev) && for f in .deps/debs/*.deb;
#   do dpkg -x "$f" .deps/root; done   (plus .deps/pkgconfig/cpp-httplib.pc, relocatable)
# There:       carry .deps; RATES=... MODES=... scripts/gpu-serve-bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu-serve}
mkdir -p "$OUT"
export OUT
STAGES=build BUDGET=${BUILD_BUDGET:-330} scripts/gpu-check.sh 2>&1 | tail -5
KILN=${BUILD_DIR:-$PWD/build-gpu}/bin/kiln
[ -x "$KILN" ] || { echo "build failed"; exit 1; }
"$KILN" serve --help >/dev/null || { echo "kiln was built without serve"; exit 1; }

echo "== kiln generate --device cuda (the embedded model, 20 steps)"
for i in 1 2; do
  /usr/bin/time -f "%e s wall" "$KILN" generate "a red circle on a blue background" --device cuda \
    --steps 20 --seed 1 --output "$OUT/cuda-$i.png" --quiet
done

echo "== serve bench"
python3 bench/serve_bench.py --kiln "$KILN" --device cuda --modes "${MODES:-step,none}" \
  --rates "${RATES:-5,10,20,40,80}" --duration "${DURATION:-10}" --steps 20 \
  --max-batch "${MAX_BATCH:-16}" --json "$OUT/serve_bench.json" 2>&1 | tee "$OUT/serve_bench.md"
