#!/usr/bin/env bash
# Builds the libFuzzer targets with AddressSanitizer and UBSan (clang) and runs
# each for SECONDS (default 30), seeded from the test files in tests/data/io.
# A crash or sanitizer report fails the script and leaves the input in build/fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
out=build/fuzz
mkdir -p "$out"
common=(src/core/error.cpp src/core/dtype.cpp src/core/tensor.cpp src/io/safetensors.cpp src/io/image.cpp)
flags=(-std=c++20 -O1 -g -Iinclude -Isrc -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all)
for target in safetensors_header png_decode; do
  clang++ "${flags[@]}" "fuzz/$target.cpp" "${common[@]}" -lz -o "$out/$target"
  corpus="$out/corpus-$target"
  mkdir -p "$corpus"
  case "$target" in
    safetensors_header) find tests/data/io -name '*.safetensors' -exec cp {} "$corpus/" \; ;;
    png_decode) find tests/data/io -name '*.png' -exec cp {} "$corpus/" \; ;;
  esac
  echo "fuzzing $target for ${seconds}s"
  (cd "$out" && "./$target" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 \
     -print_final_stats=1 "corpus-$target" 2>&1 | tail -4)
done
