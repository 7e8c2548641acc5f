// What a kernel node costs in a replayed CUDA graph, apart from its work. SD1.5's step
// is about 357 kernels in 5.1-5.5 ms, about 15 µs each, and many of them are
// latency-bound. This probe puts a number on the fixed part: how long a chain of N
// kernels takes to replay, per kernel, for kernels that do nothing, that touch one
// block's bytes, and that stream a tensor of an SD1.5 size. Each chain is also built as
// programmatic dependents (sm_90: each kernel launched while the one before is still
// draining, waiting on it with griddepcontrol.wait before its first load), in two forms:
// each kernel lets the next one launch as it starts (griddepcontrol.launch_dependents,
// what kiln's own kernels can do), or never says so (the trigger comes when it ends:
// what a PDL launch after a cuBLAS or cuDNN kernel gets). The gaps to the plain chain
// are what PDL on kiln's kernels could recover.
//
//   nvcc -std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a graph_node_probe.cu
//
// Prints a markdown table: µs a kernel, replayed (median of 20 replays of the chain).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "check_cuda.h"

namespace {

__device__ __forceinline__ void wait_prior() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_next() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// pdl: 0 an ordinary kernel, 1 trigger then wait, 2 wait only.
__global__ void empty_kernel(int pdl) {
  if (pdl == 1) allow_next();
  if (pdl) wait_prior();
}

// out = in * 1.0001 + 1 over n float4s, a grid-stride loop: a LayerNorm-like stream.
__global__ void stream_kernel(const float4* in, float4* out, long n, int pdl) {
  if (pdl == 1) allow_next();
  if (pdl) wait_prior();
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n;
       i += long(gridDim.x) * blockDim.x) {
    float4 v = in[i];
    v.x = v.x * 1.0001f + 1.0f;
    v.y = v.y * 1.0001f + 1.0f;
    v.z = v.z * 1.0001f + 1.0f;
    v.w = v.w * 1.0001f + 1.0f;
    out[i] = v;
  }
}

struct Case {
  const char* name;
  int blocks, threads;
  long bytes;  // bytes read (and as many written) a kernel; 0: the empty kernel
};

float replay_us(cudaGraphExec_t exec, cudaStream_t s, int kernels) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) CHECK_CUDA(cudaGraphLaunch(exec, s));
  std::vector<float> t;
  for (int r = 0; r < 20; ++r) {
    CHECK_CUDA(cudaEventRecord(a, s));
    CHECK_CUDA(cudaGraphLaunch(exec, s));
    CHECK_CUDA(cudaEventRecord(b, s));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000.0f / kernels);
  }
  std::sort(t.begin(), t.end());
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  return t[t.size() / 2];
}

float chain_us(const Case& c, int kernels, int pdl, float4* x, float4* y, cudaStream_t s) {
  cudaGraph_t graph;
  CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  const long n = c.bytes / 16;
  for (int k = 0; k < kernels; ++k) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(unsigned(c.blocks));
    cfg.blockDim = dim3(unsigned(c.threads));
    cfg.stream = s;
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl != 0 && k > 0 ? 1 : 0;
    if (c.bytes == 0) {
      CHECK_CUDA(cudaLaunchKernelEx(&cfg, empty_kernel, pdl));
    } else {
      // Ping-pong between two buffers so that each kernel reads what the one before wrote.
      const float4* in = k % 2 ? y : x;
      float4* out = k % 2 ? x : y;
      CHECK_CUDA(cudaLaunchKernelEx(&cfg, stream_kernel, in, out, n, pdl));
    }
  }
  CHECK_CUDA(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  const float us = replay_us(exec, s, kernels);
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  CHECK_CUDA(cudaGraphDestroy(graph));
  return us;
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("graph node probe: %s, %d SMs, %d MB L2\n\n", prop.name, sms, prop.l2CacheSize >> 20);
  const long max_bytes = 64l << 20;
  float4 *x, *y;
  CHECK_CUDA(cudaMalloc(&x, max_bytes));
  CHECK_CUDA(cudaMalloc(&y, max_bytes));
  CHECK_CUDA(cudaMemset(x, 0, max_bytes));
  CHECK_CUDA(cudaMemset(y, 0, max_bytes));
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  const std::vector<Case> cases = {
      {"empty, 1 block of 32", 1, 32, 0},
      {"empty, 1 block a SM of 256", sms, 256, 0},
      {"empty, 4 blocks a SM of 256", 4 * sms, 256, 0},
      {"stream 0.3 MB (SD1.5 2x64x1280)", sms, 256, 2l * 64 * 1280 * 2},
      {"stream 1.3 MB (SD1.5 512x1280)", sms, 256, 512l * 1280 * 2},
      {"stream 5.2 MB (SD1.5 8192x320)", 2 * sms, 256, 8192l * 320 * 2},
      {"stream 21 MB (SDXL 8192x1280)", 4 * sms, 256, 8192l * 1280 * 2},
  };
  std::printf(
      "| kernels of | chain | µs a kernel | PDL, early trigger | PDL, trigger at the end |\n");
  std::printf("|---|---|---|---|---|\n");
  for (const Case& c : cases) {
    for (int kernels : {100, 400}) {
      const float plain = chain_us(c, kernels, 0, x, y, s);
      const float early = chain_us(c, kernels, 1, x, y, s);
      const float late = chain_us(c, kernels, 2, x, y, s);
      std::printf("| %s | %d | %.2f | %.2f | %.2f |\n", c.name, kernels, plain, early, late);
    }
  }
  // Bandwidth floor for the stream cases: bytes read and written over a device copy.
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  CHECK_CUDA(cudaMemcpyAsync(y, x, max_bytes, cudaMemcpyDeviceToDevice, s));
  CHECK_CUDA(cudaEventRecord(a, s));
  for (int i = 0; i < 10; ++i) CHECK_CUDA(cudaMemcpyAsync(y, x, max_bytes, cudaMemcpyDeviceToDevice, s));
  CHECK_CUDA(cudaEventRecord(b, s));
  CHECK_CUDA(cudaEventSynchronize(b));
  float ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
  std::printf("\ndevice copy of 64 MB: %.1f µs, %.2f TB/s counting read and write\n",
              ms * 100.0f, 2.0 * 10 * max_bytes / (ms * 1e-3) / 1e12);
  return 0;
}
