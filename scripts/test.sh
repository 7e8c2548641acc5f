#!/usr/bin/env bash
# Builds kiln and runs its tests (unit and golden suites on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DKILN_WERROR="${KILN_WERROR:-OFF}" >/dev/null
cmake --build build
ctest --test-dir build --output-on-failure -j2
