#!/usr/bin/env bash
# Fetches cuobjdump and the nvdisasm it runs (the CUDA toolkit's disassemblers; this
# machine's toolkit lacks them) from their pinned PyPI wheels, checked by hash, into
# .deps/, for tools/py/sass_loops.py: reading a kernel's SASS without a GPU. Not a
# build dependency.
#
#   CUOBJDUMP=$(scripts/fetch-cuobjdump.sh) python3 tools/py/sass_loops.py FILE.cubin KERNEL
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pinned-wheel.sh
version=13.5.37
platform=py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64
# wheel name, its sha256, the file it carries
tools=(
  "nvidia_cuda_cuobjdump-$version-$platform.whl 38780fee50863252a0b8926357faa91615ca1c8346490563f33a06100cd73f58 cuobjdump"
  "nvidia_cuda_nvdisasm-$version-$platform.whl d3fdbdd49fa53e2e4aacd3db8259d052bd2b049ececdcb69e92e083c6728e7ca nvdisasm"
)
dest=.deps/cuobjdump-$version
if [ -x "$dest/cuobjdump" ] && [ -x "$dest/nvdisasm" ]; then
  echo "$PWD/$dest/cuobjdump"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dest"
for entry in "${tools[@]}"; do
  read -r wheel sha256 name <<<"$entry"
  package=${wheel%%-"$version"*}
  pinned_wheel "$tmp" "$wheel" "$sha256" "${package//_/-}==$version" \
    --platform manylinux2014_x86_64
  python3 - "$tmp/$wheel" "nvidia/cu13/bin/$name" "$dest/$name" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    data = z.read(sys.argv[2])
with open(sys.argv[3], "wb") as f:
    f.write(data)
os.chmod(sys.argv[3], 0o755)
PY
done
echo "$PWD/$dest/cuobjdump"
