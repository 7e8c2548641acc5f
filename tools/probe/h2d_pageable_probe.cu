// Whether a small host-to-device copy from pageable memory waits for the stream. Each
// denoising step copies its timesteps (8 bytes) from a host tensor into the graph's
// fixed input with cudaMemcpyAsync; the CUDA documentation says that where pageable
// memory must be staged the driver "may synchronize with the stream". If it does, the
// host stops queuing until the GPU has run everything before the copy, and the GPU then
// idles while the host queues the rest of the step: SD1.5's 30-step generation spends
// about 4.4 ms outside its UNet replays, text encoder and VAE (v34).
//
// The probe queues a kernel that spins for 2 ms, then times on the host how long
// cudaMemcpyAsync takes to return for copies of 8 B to 1 MB, from pageable and from
// pinned memory. About 2000 µs: the call waited for the kernel; a few µs: it did not.
//
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a h2d_pageable_probe.cu
//
// Prints a markdown table.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "check_cuda.h"

namespace {

__global__ void spin(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

double host_us_of_copy(void* dst, const void* src, size_t bytes, cudaStream_t s, long long cycles) {
  spin<<<1, 32, 0, s>>>(cycles);
  CHECK_CUDA(cudaGetLastError());
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
  const auto t1 = std::chrono::steady_clock::now();
  CHECK_CUDA(cudaStreamSynchronize(s));
  return std::chrono::duration<double, std::micro>(t1 - t0).count();
}

}  // namespace

int main() {
  cudaDeviceProp props{};
  CHECK_CUDA(cudaGetDeviceProperties(&props, 0));
  int khz = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
  const long long cycles = (long long)khz * 2;  // kHz: cycles in 2 ms
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const size_t max_bytes = size_t(1) << 20;
  void* dev = nullptr;
  void* pinned = nullptr;
  CHECK_CUDA(cudaMalloc(&dev, max_bytes));
  CHECK_CUDA(cudaMallocHost(&pinned, max_bytes));
  std::vector<char> pageable(max_bytes, 1);
  host_us_of_copy(dev, pageable.data(), 8, s, cycles);  // warm-up
  host_us_of_copy(dev, pinned, 8, s, cycles);
  std::printf("%s: host µs for cudaMemcpyAsync to return behind a 2 ms kernel (median of 5)\n\n",
              props.name);
  std::printf("| bytes | pageable | pinned |\n|---|---|---|\n");
  for (size_t bytes : {size_t(8), size_t(4096), size_t(65536), size_t(1) << 20}) {
    double med[2];
    for (int kind = 0; kind < 2; ++kind) {
      std::vector<double> t;
      for (int r = 0; r < 5; ++r)
        t.push_back(host_us_of_copy(dev, kind == 0 ? static_cast<const void*>(pageable.data()) : pinned,
                                    bytes, s, cycles));
      std::sort(t.begin(), t.end());
      med[kind] = t[2];
    }
    std::printf("| %zu | %.1f | %.1f |\n", bytes, med[0], med[1]);
  }
  CHECK_CUDA(cudaFreeHost(pinned));
  CHECK_CUDA(cudaFree(dev));
  return 0;
}
