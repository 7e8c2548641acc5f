#!/usr/bin/env bash
# Fetches CUTLASS's headers (header-only C++, BSD-3-Clause; kiln's CUDA backend builds
# its fused GEGLU GEMM on CUTLASS's Hopper kernels, src/backend/cuda/gemm_geglu.cu) into
# .deps/, where CMake finds them. They come from the pinned PyPI wheel nvidia-cutlass,
# checked by hash: its include/ and tools/util/include/ merged into one folder. Without
# them kiln builds and runs as before, the projection and the GEGLU as two ops.
#
#   scripts/fetch-cutlass.sh        prints the include folder
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pinned-wheel.sh
version=4.2.0.0
sha256=f9599ada45c7bcb6bf53f7d3f0a7d154183e53451c01bfa59eecd37dd4a693f6
wheel=nvidia_cutlass-$version-py3-none-any.whl
dest=.deps/cutlass-$version
if [ -f "$dest/include/cutlass/cutlass.h" ]; then
  echo "$PWD/$dest/include"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -f ".cutlass/$wheel" ]; then
  cp ".cutlass/$wheel" "$tmp/"
  echo "$sha256  $tmp/$wheel" | sha256sum -c --quiet - >&2
else
  pinned_wheel "$tmp" "$wheel" "$sha256" "nvidia-cutlass==$version"
fi
mkdir -p "$dest.partial"
python3 - "$tmp/$wheel" "$dest.partial/include" <<'PY'
import os, sys, zipfile
roots = ("cutlass_library/source/include/", "cutlass_library/source/tools/util/include/")
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        for root in roots:
            if info.filename.startswith(root) and not info.filename.endswith("/"):
                path = os.path.join(sys.argv[2], info.filename[len(root):])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with z.open(info) as src, open(path, "wb") as dst:
                    dst.write(src.read())
PY
rm -rf "$dest" && mv "$dest.partial" "$dest"
echo "$PWD/$dest/include"
