#!/usr/bin/env bash
# Builds kiln and runs its tests (unit and golden suites on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DKILN_WERROR="${KILN_WERROR:-OFF}" >/dev/null
cmake --build build
# One test process at a time: each already uses every core through OpenMP.
ctest --test-dir build --output-on-failure
# The command line and (later) the server, over real processes. Debian's python3
# carries pytest (scripts/install-deps.sh installs it).
/usr/bin/python3 -m pytest -q tests/e2e
