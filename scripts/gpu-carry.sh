#!/usr/bin/env bash
# Makes the folders a run on the GPU machine carries beside the working tree (that
# machine has no network, no diffusers, no cuDNN frontend and no CUTLASS):
#   .cache/deps.tar.xz  cuDNN frontend's and CUTLASS's headers (.deps/, fetched by
#                       scripts/install-deps.sh), unpacked there before the build
#   .whl/               the diffusers wheel the peer and the full-size check import
#   .peer/              a copy of the shared peer benchmark (bench_diffusers.py)
# Safe to run twice; prints the carry list and the command's first words.
#
#   scripts/gpu-carry.sh [PEER_DIR]     PEER_DIR: the shared peer folder (../shared/peer)
set -euo pipefail
cd "$(dirname "$0")/.."
peer_src=${1:-../shared/peer}
diffusers_version=0.42.1

scripts/fetch-cudnn-frontend.sh >/dev/null
scripts/fetch-cutlass.sh >/dev/null
mkdir -p .cache
tar cJf .cache/deps.tar.xz.tmp .deps && mv .cache/deps.tar.xz.tmp .cache/deps.tar.xz

if ! ls .whl/diffusers-"$diffusers_version"-*.whl >/dev/null 2>&1; then
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp -d .whl "diffusers==$diffusers_version"
fi

if [ ! -f "$peer_src/bench_diffusers.py" ]; then
  echo "gpu-carry: no bench_diffusers.py in $peer_src (pass the shared peer folder)" >&2
  exit 1
fi
mkdir -p .peer
cp -r "$peer_src"/. .peer/

du -sh .cache .whl .peer | sed 's/^/gpu-carry: /'
echo 'carry: [".cache", ".whl", ".peer"]'
echo 'command: tar xJf .cache/deps.tar.xz && COMMIT=<hash> scripts/gpu-check.sh ...'
