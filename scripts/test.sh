#!/usr/bin/env bash
# Builds kiln and runs its tests (unit and golden suites on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DKILN_WERROR="${KILN_WERROR:-OFF}" >/dev/null
cmake --build build
# One test process at a time: each already uses every core through OpenMP.
ctest --test-dir build --output-on-failure --label-exclude backend  # CUDA ops: scripts/gpu-check.sh
# The command line and the server, over real processes. Debian's python3 carries
# pytest, numpy, Pillow and selenium (scripts/install-deps.sh); the server tests also
# drive kiln serve with the official openai and webuiapi clients, pinned in
# tests/e2e/requirements-serve.txt and installed once into build/venv.
venv=build/venv
requirements=tests/e2e/requirements-serve.txt
if ! cmp -s "$requirements" "$venv/requirements-serve.txt" 2>/dev/null; then
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements-serve.txt"
fi
"$venv/bin/python" -m pytest -q tests/e2e tests/tools
