#!/usr/bin/env bash
# Installs the Debian packages kiln builds against (and, for the end-to-end
# tests, the Python packages they use). Safe to run twice. kiln serve needs
# cpp-httplib (JPEG and WebP answers need libjpeg and libwebp); its tests drive a
# headless Chromium through selenium and create a venv (python3-venv) for the
# pinned PyPI clients (scripts/test.sh).
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config libopenblas-dev nlohmann-json3-dev zlib1g-dev
          libgtest-dev python3 python3-pytest python3-numpy python3-pil
          libcpp-httplib-dev libjpeg-dev libwebp-dev
          python3-venv python3-requests python3-selenium)
# oneDNN makes the CPU GEMMs faster than OpenBLAS (docs/cpu-gemm.md) where the
# distribution has it. Only the web page's browser test needs chromium; it is skipped
# without it (on Ubuntu chromium is a snap, which containers cannot install).
optional=(libdnnl-dev chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
missing_optional=()
for p in "${optional[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing_optional+=("$p")
done
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_optional[@]} -gt 0 ]; then
  $sudo_cmd apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
for p in "${missing_optional[@]}"; do  # one at a time: one failing must not stop the others
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "$p" ||
    echo "install-deps: optional package $p not installed"
done

# cuDNN frontend's headers (fused attention in the CUDA backend), where the CUDA
# toolkit is installed; optional: without them kiln uses its own attention kernel.
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  "$(dirname "$0")/fetch-cudnn-frontend.sh" >/dev/null ||
    echo "install-deps: cuDNN frontend headers not fetched; kiln's own attention only"
  # CUTLASS's headers (the fused GEGLU GEMM); optional like the frontend's.
  "$(dirname "$0")/fetch-cutlass.sh" >/dev/null ||
    echo "install-deps: CUTLASS headers not fetched; the GEGLU runs as its own pass"
fi
