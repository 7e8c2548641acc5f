#!/usr/bin/env bash
# Builds the kiln command at build/bin/kiln (Release, all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DKILN_WERROR="${KILN_WERROR:-OFF}" >/dev/null
cmake --build build --target kiln
