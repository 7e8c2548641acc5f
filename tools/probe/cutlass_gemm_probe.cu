// Probe, not part of the build: how fast CUTLASS's Hopper GEMM kernels (TMA, warp
// specialisation, clusters) run SDXL's and SD1.5's GEMM shapes on this GPU, beside
// cuBLAS in the same process. The question it answers (bench/cuda-notes.md, v16): is
// kiln's own GEMM (branch wip/gemm-wgmma, 20-75% slower than cuBLASLt) short of what
// this structure reaches, and could CUTLASS, with its epilogue fusions, be the base of
// the fused GEMMs (GEGLU, residual) instead of a kernel of our own?
//
// CUTLASS is a library here, used as its headers ship in the PyPI wheel
// nvidia-cutlass==4.2.0.0 (cutlass_library/source/include and tools/util/include);
// nothing of it is kept in this repository. scripts/gpu-cutlass-probe.sh does all of
// the below in one device call. Here: `python3 -m pip download --no-deps
// --only-binary=:all: -d .cutlass nvidia-cutlass==4.2.0.0` (.cutlass/ is ignored; not
// .whl/, whose wheels gpu-check installs); on the GPU machine, with .cutlass carried:
//
//   python3 -m zipfile -e .cutlass/nvidia_cutlass-4.2.0.0-py3-none-any.whl /tmp/cutlass
//   I=/tmp/cutlass/cutlass_library/source
//   nvcc -std=c++17 -O3 -DNDEBUG -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr \
//     -I$I/include -I$I/tools/util/include tools/probe/cutlass_gemm_probe.cu \
//     -lcublas -o /tmp/cutlass_probe && /tmp/cutlass_probe
//
// -DNDEBUG matters: without it CuTe's device asserts are calls inside the mainloop,
// and ptxas serialises every wgmma (warning C7510). Built so here (nvcc 13.0, 2 cores,
// about a minute), not yet run.
//
// Output: one row a shape, µs a call (CUDA events over 50 calls after 5 warm-ups) for
// cuBLAS and each CUTLASS configuration, and TF/s; a configuration that cannot run the
// shape prints "–". Results are checked against cuBLAS's (max relative difference).
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "check_cuda.h"

using namespace cute;

// kiln's layout: C[M, N] = A[M, K] · B[N, K]^T, all row-major, so A is K-major
// (RowMajor M × K) and B is K-major too (ColumnMajor K × N).
template <class Tile, class Cluster, class KernelSchedule, class EpilogueSchedule,
          class Scheduler = void>
struct Config {
  using Element = cutlass::half_t;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, Element,
      cutlass::layout::RowMajor, 8, Element, cutlass::layout::RowMajor, 8,
      EpilogueSchedule>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, cutlass::layout::RowMajor, 8,
      Element, cutlass::layout::ColumnMajor, 8, float, Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue,
                                                      Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

using Coop128x128c2 = Config<Shape<_128, _128, _64>, Shape<_2, _1, _1>,
                             cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                             cutlass::epilogue::TmaWarpSpecializedCooperative>;
using Coop128x256c2 = Config<Shape<_128, _256, _64>, Shape<_2, _1, _1>,
                             cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                             cutlass::epilogue::TmaWarpSpecializedCooperative>;
using Coop256x128c1 = Config<Shape<_256, _128, _64>, Shape<_1, _1, _1>,
                             cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                             cutlass::epilogue::TmaWarpSpecializedCooperative>;
using Ping64x128c2 =
    Config<Shape<_64, _128, _64>, Shape<_2, _1, _1>,
           cutlass::gemm::KernelTmaWarpSpecializedPingpong, cutlass::epilogue::TmaWarpSpecialized>;
using Ping64x256c1 =
    Config<Shape<_64, _256, _64>, Shape<_1, _1, _1>,
           cutlass::gemm::KernelTmaWarpSpecializedPingpong, cutlass::epilogue::TmaWarpSpecialized>;

// v24: tiles fitted to the waves (bench/cuda-notes.md): 128x160 makes SDXL's 2048x1280
// and SD1.5's 8192x320 outputs 128 tiles, one wave on 132 multiprocessors, where 128x128
// makes 160 or 192 (two waves) and 256x128 makes 80; 64x160 does the same for
// 2048x640. And stream-K (CUTLASS's StreamKScheduler, cooperative only), which splits
// the K loop so that every multiprocessor has work: what cuBLAS's 12 us on 2048x1280x1280
// (560 TF/s on 80 tiles' worth of output) suggests it does.
using Coop128x160c1 = Config<Shape<_128, _160, _64>, Shape<_1, _1, _1>,
                             cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                             cutlass::epilogue::TmaWarpSpecializedCooperative>;
using Ping64x160c1 =
    Config<Shape<_64, _160, _64>, Shape<_1, _1, _1>,
           cutlass::gemm::KernelTmaWarpSpecializedPingpong, cutlass::epilogue::TmaWarpSpecialized>;
using Coop128x128sk =
    Config<Shape<_128, _128, _64>, Shape<_1, _1, _1>,
           cutlass::gemm::KernelTmaWarpSpecializedCooperative,
           cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler>;
using Coop128x256sk =
    Config<Shape<_128, _256, _64>, Shape<_1, _1, _1>,
           cutlass::gemm::KernelTmaWarpSpecializedCooperative,
           cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler>;

struct Problem {
  int m, n, k;
  const half *a, *b;
  half* c;
};

template <class Timed>
float time_us(Timed&& run) {
  for (int i = 0; i < 5; ++i) run();
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  constexpr int kCalls = 50;
  CHECK_CUDA(cudaEventRecord(start));
  for (int i = 0; i < kCalls; ++i) run();
  CHECK_CUDA(cudaEventRecord(stop));
  CHECK_CUDA(cudaEventSynchronize(stop));
  float ms = 0.0f;
  CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  return ms * 1000.0f / kCalls;
}

// µs a call of configuration C on `p` (writing p.c), or a negative number where it
// cannot run the shape.
template <class C>
float run_cutlass(const Problem& p) {
  using Gemm = typename C::Gemm;
  using Kernel = typename Gemm::GemmKernel;
  auto stride_a = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, {p.m, p.k, 1});
  auto stride_b = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, {p.n, p.k, 1});
  auto stride_c = cutlass::make_cute_packed_stride(typename Kernel::StrideC{}, {p.m, p.n, 1});
  auto stride_d = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, {p.m, p.n, 1});
  using E = cutlass::half_t;
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {p.m, p.n, p.k, 1},
      {reinterpret_cast<const E*>(p.a), stride_a, reinterpret_cast<const E*>(p.b), stride_b},
      {{1.0f, 0.0f},
       reinterpret_cast<const E*>(p.c),
       stride_c,
       reinterpret_cast<E*>(p.c),
       stride_d}};
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return -1.0f;
  void* workspace = nullptr;
  const size_t bytes = Gemm::get_workspace_size(args);
  if (bytes) CHECK_CUDA(cudaMalloc(&workspace, bytes));
  if (gemm.initialize(args, workspace) != cutlass::Status::kSuccess) return -1.0f;
  const float us = time_us([&] { gemm.run(); });
  CHECK_CUDA(cudaDeviceSynchronize());
  if (workspace) CHECK_CUDA(cudaFree(workspace));
  return us;
}

// The largest |x - ref| / (|ref| + 1e-2) over the output.
float max_rel_diff(const half* x, const half* ref, size_t count) {
  std::vector<half> hx(count), hr(count);
  CHECK_CUDA(cudaMemcpy(hx.data(), x, count * sizeof(half), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(hr.data(), ref, count * sizeof(half), cudaMemcpyDeviceToHost));
  float worst = 0.0f;
  for (size_t i = 0; i < count; ++i) {
    const float r = __half2float(hr[i]), v = __half2float(hx[i]);
    worst = std::fmax(worst, std::fabs(v - r) / (std::fabs(r) + 1e-2f));
  }
  return worst;
}

__global__ void fill(half* p, size_t count, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2half(scale * (float(h & 0xFFFF) / 32768.0f - 1.0f));
  }
}

int main() {
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs\n\n", prop.name, prop.multiProcessorCount);
  // M x N x K as kiln bench labels them ("linear MxNxK"), calls a step in brackets.
  const int shapes[][3] = {
      {2048, 1280, 1280},   // SDXL attention projections, proj_in/out (192)
      {2048, 10240, 1280},  // SDXL GEGLU projection (60)
      {2048, 1280, 5120},   // SDXL FF out (60)
      {2048, 3840, 1280},   // SDXL fused q, k, v (60)
      {8192, 640, 640},     // SDXL 64×64 level (40)
      {8192, 1920, 640},    // SDXL 64×64 fused q, k, v (10)
      {8192, 640, 2560},    // SDXL 64×64 FF out (10)
      {8192, 5120, 640},    // SDXL 64×64 GEGLU (10)
      {8192, 320, 320},     // SD1.5 64×64 level (25)
      {8192, 960, 320},     // SD1.5 64×64 fused q, k, v (5)
      {8192, 320, 1280},    // SD1.5 64×64 FF out (5)
      {2048, 640, 640},     // SD1.5 32×32 level (25)
      {2048, 1920, 640},    // SD1.5 32×32 fused q, k, v (5)
      {512, 1280, 1280},    // SD1.5 16×16 level (25)
  };
  cublasHandle_t blas;
  cublasCreate(&blas);
  struct Named {
    const char* name;
    float (*run)(const Problem&);
  };
  const Named configs[] = {
      {"coop 128x128 c2", run_cutlass<Coop128x128c2>},
      {"coop 128x256 c2", run_cutlass<Coop128x256c2>},
      {"coop 256x128", run_cutlass<Coop256x128c1>},
      {"ping 64x128 c2", run_cutlass<Ping64x128c2>},
      {"ping 64x256", run_cutlass<Ping64x256c1>},
      {"coop 128x160", run_cutlass<Coop128x160c1>},
      {"ping 64x160", run_cutlass<Ping64x160c1>},
      {"coop 128x128 stream-K", run_cutlass<Coop128x128sk>},
      {"coop 128x256 stream-K", run_cutlass<Coop128x256sk>},
  };
  constexpr int kConfigs = sizeof(configs) / sizeof(configs[0]);
  std::printf("| M x N x K | cuBLAS µs |");
  for (const Named& c : configs) std::printf(" %s |", c.name);
  std::printf(" best | best TF/s | best vs cuBLAS | worst rel. diff |\n|---|---|");
  for (int i = 0; i < kConfigs + 4; ++i) std::printf("---|");
  std::printf("\n");
  std::fflush(stdout);
  for (const auto& s : shapes) {
    Problem p{s[0], s[1], s[2], nullptr, nullptr, nullptr};
    half *a, *b, *c, *ref;
    const size_t na = size_t(p.m) * p.k, nb = size_t(p.n) * p.k, nc = size_t(p.m) * p.n;
    CHECK_CUDA(cudaMalloc(&a, na * sizeof(half)));
    CHECK_CUDA(cudaMalloc(&b, nb * sizeof(half)));
    CHECK_CUDA(cudaMalloc(&c, nc * sizeof(half)));
    CHECK_CUDA(cudaMalloc(&ref, nc * sizeof(half)));
    fill<<<1024, 256>>>(a, na, 1, 1.0f);
    fill<<<1024, 256>>>(b, nb, 2, 1.0f / std::sqrt(float(p.k)));
    p.a = a;
    p.b = b;
    p.c = c;
    // cuBLAS, column-major: C^T (N × M) = B (N × K, "transposed" K × N) · A^T.
    const float alpha = 1.0f, beta = 0.0f;
    auto blas_run = [&](half* out) {
      cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, p.n, p.m, p.k, &alpha, b, CUDA_R_16F, p.k, a,
                   CUDA_R_16F, p.k, &beta, out, CUDA_R_16F, p.n, CUBLAS_COMPUTE_32F,
                   CUBLAS_GEMM_DEFAULT);
    };
    const float blas_us = time_us([&] { blas_run(ref); });
    CHECK_CUDA(cudaDeviceSynchronize());
    // Each configuration's output checked against cuBLAS's before the next one runs.
    float diff = 0.0f;
    float us[kConfigs];
    int best_i = -1;
    float best = blas_us;
    for (int i = 0; i < kConfigs; ++i) {
      std::fprintf(stderr, "%dx%dx%d %s\n", p.m, p.n, p.k, configs[i].name);  // where it stops
      us[i] = configs[i].run(p);
      if (us[i] > 0.0f) diff = std::fmax(diff, max_rel_diff(c, ref, nc));
      CHECK_CUDA(cudaMemset(c, 0, nc * sizeof(half)));
      if (us[i] > 0.0f && us[i] < best) best = us[i], best_i = i;
    }
    std::printf("| %dx%dx%d | %.1f |", p.m, p.n, p.k, blas_us);
    for (float u : us) u > 0.0f ? std::printf(" %.1f |", u) : std::printf(" – |");
    std::printf(" %s | %.0f | %.2fx | %.3g |\n", best_i < 0 ? "cuBLAS" : configs[best_i].name,
                2.0 * p.m * p.n * p.k / (best * 1e-6) / 1e12, blas_us / best, diff);
    std::fflush(stdout);  // each row as it comes, should a later one hang
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    cudaFree(ref);
  }
  cublasDestroy(blas);
  return 0;
}
