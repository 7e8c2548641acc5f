#!/usr/bin/env bash
# Fetches the headers of cuDNN's frontend (header-only C++, MIT; the graph API that
# kiln's CUDA backend uses for cuDNN's fused attention) into .deps/, where CMake
# finds them. They come from the pinned PyPI wheel, checked by hash. Without them
# kiln builds and runs as before, with its own attention kernel only.
#
#   scripts/fetch-cudnn-frontend.sh        prints the include folder
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pinned-wheel.sh
version=1.32.0
sha256=8b354a8e550c083eb247f1eb39a7d69a4a269075f5a01e4fcbd2531680b17239
wheel=nvidia_cudnn_frontend-$version-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
dest=.deps/cudnn-frontend-$version
if [ -f "$dest/include/cudnn_frontend.h" ]; then
  echo "$PWD/$dest/include"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pinned_wheel "$tmp" "$wheel" "$sha256" "nvidia-cudnn-frontend==$version" \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
mkdir -p "$dest.partial"
python3 - "$tmp/$wheel" "$dest.partial" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.startswith("include/") and not name.endswith("/"):
            z.extract(name, sys.argv[2])
EOF
rm -rf "$dest" && mv "$dest.partial" "$dest"
echo "$PWD/$dest/include"
