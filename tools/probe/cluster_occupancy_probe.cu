// How many thread-block clusters a GPU holds at once, and what a cluster's size costs a
// kernel that streams weights. v32's split-K convolution (removed in v34) launched 16
// column tiles as clusters of 8 blocks, one block a multiprocessor (124 or 189 KB of
// shared memory), and took 37-44 µs a call on an H100 against the 19 µs its DRAM stream
// and MMAs predicted: fewer than 16 clusters of 8 fit, so the call ran in two waves
// (bench/results/2026-12-07-v34). This probe prints cudaOccupancyMaxActiveClusters for
// cluster sizes 1-16 and several shared-memory sizes, then times 128 blocks that each
// stream 225 KB (that kernel's weights a block: 80 channels × 9 taps × 160 inputs × 2
// bytes) with one block a multiprocessor, launched as clusters of 1, 2, 4 and 8. H100:
// 15 clusters of 8 and 30 of 4 at one block a multiprocessor (120 of 132 used).
//
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a cluster_occupancy_probe.cu
//
// Prints two markdown tables.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "check_cuda.h"

namespace {

// Each block sums its own `per_block` bytes (uint4 loads, unrolled by 4) and writes one
// value, so nothing is optimised away.
__global__ void stream_kernel(const uint4* __restrict__ src, size_t per_block_vecs, float* out) {
  extern __shared__ float pad[];  // only there to hold one block a multiprocessor
  const uint4* p = src + blockIdx.x * per_block_vecs;
  unsigned acc = 0;
  for (size_t i = threadIdx.x; i < per_block_vecs; i += 4 * blockDim.x) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const size_t j = i + size_t(u) * blockDim.x;
      v[u] = j < per_block_vecs ? __ldcs(p + j) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == 0x12345678u) pad[0] = 1.0f;  // never, in practice
  if (threadIdx.x == 0) out[blockIdx.x] = float(acc & 1);
}

cudaLaunchConfig_t config_for(int blocks, int cluster, size_t smem, cudaLaunchAttribute* attrs) {
  cudaLaunchConfig_t c{};
  c.gridDim = dim3(unsigned(blocks));
  c.blockDim = dim3(256);
  c.dynamicSmemBytes = smem;
  attrs[0].id = cudaLaunchAttributeClusterDimension;
  attrs[0].val.clusterDim.x = unsigned(cluster);
  attrs[0].val.clusterDim.y = 1;
  attrs[0].val.clusterDim.z = 1;
  c.attrs = attrs;
  c.numAttrs = 1;
  return c;
}

}  // namespace

int main() {
  cudaDeviceProp props{};
  CHECK_CUDA(cudaGetDeviceProperties(&props, 0));
  std::printf("%s, %d multiprocessors, %zu KB shared memory a block at most\n\n", props.name,
              props.multiProcessorCount, props.sharedMemPerBlockOptin / 1024);
  CHECK_CUDA(cudaFuncSetAttribute(stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  int(props.sharedMemPerBlockOptin)));
  CHECK_CUDA(cudaFuncSetAttribute(stream_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));

  const int clusters[] = {1, 2, 4, 8, 16};
  const size_t smems[] = {48 << 10, 100 << 10, 124 << 10, 189 << 10};
  std::printf("| shared KB a block | max active clusters of 1 | of 2 | of 4 | of 8 | of 16 |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (size_t smem : smems) {
    std::printf("| %zu |", smem >> 10);
    for (int cl : clusters) {
      cudaLaunchAttribute attrs[1];
      const cudaLaunchConfig_t c = config_for(cl, cl, smem, attrs);
      int n = 0;
      if (cudaOccupancyMaxActiveClusters(&n, stream_kernel, &c) != cudaSuccess) {
        (void)cudaGetLastError();
        std::printf(" error |");
      } else {
        std::printf(" %d |", n);
      }
    }
    std::printf("\n");
  }

  // 128 blocks × 230 KB, one block a multiprocessor (124 KB of shared memory).
  const int blocks = 128;
  const size_t per_block = size_t(80) * 9 * 160 * 2;
  const size_t vecs = per_block / 16;
  uint4* src = nullptr;
  float* out = nullptr;
  CHECK_CUDA(cudaMalloc(&src, blocks * per_block));
  CHECK_CUDA(cudaMalloc(&out, blocks * sizeof(float)));
  CHECK_CUDA(cudaMemset(src, 1, blocks * per_block));
  // A buffer bigger than L2 streamed between timed launches, so the weights come from DRAM.
  const size_t flush_bytes = size_t(256) << 20;
  void* flush = nullptr;
  CHECK_CUDA(cudaMalloc(&flush, flush_bytes));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::printf("\n128 blocks streaming %zu KB each (%.1f MB), 124 KB shared a block, µs a launch "
              "(median of 30, L2 flushed before each)\n\n",
              per_block >> 10, blocks * per_block / 1e6);
  std::printf("| cluster | µs | TB/s |\n|---|---|---|\n");
  for (int cl : {1, 2, 4, 8}) {
    cudaLaunchAttribute attrs[1];
    const cudaLaunchConfig_t c = config_for(blocks, cl, 124 << 10, attrs);
    std::vector<float> times;
    for (int rep = 0; rep < 33; ++rep) {
      CHECK_CUDA(cudaMemsetAsync(flush, rep, flush_bytes));
      CHECK_CUDA(cudaEventRecord(start));
      CHECK_CUDA(cudaLaunchKernelEx(&c, stream_kernel, static_cast<const uint4*>(src), vecs, out));
      CHECK_CUDA(cudaEventRecord(stop));
      CHECK_CUDA(cudaEventSynchronize(stop));
      float ms = 0;
      CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
      if (rep >= 3) times.push_back(ms * 1000.0f);
    }
    std::sort(times.begin(), times.end());
    const float us = times[times.size() / 2];
    std::printf("| %d | %.1f | %.2f |\n", cl, us, blocks * per_block / (us * 1e-6) / 1e12);
  }
  CHECK_CUDA(cudaFree(flush));
  CHECK_CUDA(cudaFree(src));
  CHECK_CUDA(cudaFree(out));
  return 0;
}
