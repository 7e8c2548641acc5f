// Probe for the next Hopper kernels (a GEMM of our own, FA3-style attention): does a
// TMA load with 128-byte swizzle put a [64][64] f16 tile where wgmma's 128-byte-swizzle
// descriptors read it? One block, one warpgroup, D[64×64] = A[64×64] · B[64×64]^T with
// A and B both K-major, four m64n64k16 steps, each moving the descriptors' start
// 32 bytes along the swizzled rows. Three modes, each checked against the CPU:
//   0  TMA loads A and B (SWIZZLE_128B), wgmma reads them with swizzled descriptors;
//   1  the threads write A and B with the swizzle formula of bench/cuda-notes.md
//      (element (r, c) at r·128 + ((c/8) XOR (r%8))·16 + (c%8)·2), same descriptors:
//      the descriptors without TMA;
//   2  TMA loads A, and its shared-memory bytes are compared with the formula: TMA's
//      layout without wgmma.
// Not part of the build (CI has no GPU). On the GPU machine:
//   nvcc -std=c++17 -O2 -gencode arch=compute_90a,code=sm_90a \
//     tools/probe/tma_wgmma_probe.cu -o /tmp/tma_probe && /tmp/tma_probe
// It links no libcuda: the tensor map is encoded through the runtime's driver entry
// point. Exit status 0 when every mode matches.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#define CHECK(x)                                                                              \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                           \
    }                                                                                         \
  } while (0)

constexpr int kRows = 64, kK = 64, kTileBytes = kRows * kK * 2;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

// K-major operand, 128-byte swizzle: start address, leading offset unused (16 B),
// stride offset 1024 B (eight rows of 128 B), layout type 1 (SWIZZLE_128B) in bits 62–63.
__device__ uint64_t desc_128b(const void* p) {
  return uint64_t((smem_u32(p) & 0x3FFFF) >> 4) | uint64_t(1) << 16 | uint64_t(1024 >> 4) << 32 |
         uint64_t(1) << 62;
}

__device__ __forceinline__ void wgmma_ss_64x64(float (&d)[32], uint64_t a, uint64_t b,
                                               int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(accumulate));
}

__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int c0, int c1,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3}], [%4];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
      : "memory");
}

__global__ void probe(const __grid_constant__ CUtensorMap map_a,
                      const __grid_constant__ CUtensorMap map_b, const half* a, const half* b,
                      float* out, unsigned char* raw, int mode) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  half* sa = reinterpret_cast<half*>(base);
  half* sb = reinterpret_cast<half*>(base + kTileBytes);
  __shared__ uint64_t bar;
  const int tid = threadIdx.x;

  if (mode == 1) {
    for (int i = tid; i < kRows * kK; i += blockDim.x) {
      const int r = i / kK, c = i % kK;
      const int at = r * 128 + (((c / 8) ^ (r % 8)) * 16) + (c % 8) * 2;  // bytes
      *reinterpret_cast<half*>(base + at) = a[i];
      *reinterpret_cast<half*>(base + kTileBytes + at) = b[i];
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
  } else {
    if (tid == 0) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_u32(&bar)) : "memory");
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (tid == 0) {
      const int bytes = mode == 2 ? kTileBytes : 2 * kTileBytes;
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(&bar)),
                   "r"(bytes)
                   : "memory");
      tma_load_2d(sa, &map_a, 0, 0, &bar);
      if (mode != 2) tma_load_2d(sb, &map_b, 0, 0, &bar);
    }
    asm volatile(
        "{\n.reg .pred done;\nWAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], 0;\n"
        "@!done bra WAIT;\n}\n" ::"r"(smem_u32(&bar))
        : "memory");
  }
  if (mode == 2) {
    for (int i = tid; i < kTileBytes; i += blockDim.x) raw[i] = base[i];
    return;
  }

  float acc[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.0f;
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
  for (int k = 0; k < kK / 16; ++k)
    wgmma_ss_64x64(acc, desc_128b(base + k * 32), desc_128b(base + kTileBytes + k * 32), k > 0);
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  const int warp = tid / 32, lane = tid % 32, g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int tn = 0; tn < 8; ++tn)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = warp * 16 + g + (e >> 1) * 8, col = tn * 8 + 2 * q + (e & 1);
      out[row * 64 + col] = acc[tn * 4 + e];
    }
#else
  (void)map_a, (void)map_b, (void)a, (void)b, (void)out, (void)raw, (void)mode;
  __trap();
#endif
}

CUtensorMap tile_map(PFN_cuTensorMapEncodeTiled_v12000 encode, void* global) {
  CUtensorMap map{};
  const cuuint64_t dims[2] = {kK, kRows};             // inner first
  const cuuint64_t strides[1] = {kK * sizeof(half)};  // bytes between rows
  const cuuint32_t box[2] = {kK, kRows}, unit[2] = {1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, global, dims, strides, box,
                            unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    std::fprintf(stderr, "cuTensorMapEncodeTiled: error %d\n", int(r));
    std::exit(2);
  }
  return map;
}

int main() {
  PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  cudaDriverEntryPointQueryResult found{};
  CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled",
                                         reinterpret_cast<void**>(&encode), 12000,
                                         cudaEnableDefault, &found));
  if (!encode || found != cudaDriverEntryPointSuccess) {
    std::fprintf(stderr, "no cuTensorMapEncodeTiled\n");
    return 2;
  }
  // Small integers over 8: exact in f16, and their products sum exactly in f32.
  std::vector<half> ha(kRows * kK), hb(kRows * kK);
  std::vector<float> fa(ha.size()), fb(hb.size());
  for (int i = 0; i < kRows * kK; ++i) {
    fa[i] = float((i * 7 + 3) % 17 - 8) / 8.0f;
    fb[i] = float((i * 5 + 1) % 13 - 6) / 8.0f;
    ha[i] = __float2half(fa[i]);
    hb[i] = __float2half(fb[i]);
  }
  std::vector<float> ref(64 * 64, 0.0f);
  for (int m = 0; m < 64; ++m)
    for (int n = 0; n < 64; ++n) {
      float s = 0.0f;
      for (int k = 0; k < kK; ++k) s += fa[m * kK + k] * fb[n * kK + k];
      ref[m * 64 + n] = s;
    }
  half *da, *db;
  float* dout;
  unsigned char* draw;
  CHECK(cudaMalloc(&da, kTileBytes));
  CHECK(cudaMalloc(&db, kTileBytes));
  CHECK(cudaMalloc(&dout, 64 * 64 * sizeof(float)));
  CHECK(cudaMalloc(&draw, kTileBytes));
  CHECK(cudaMemcpy(da, ha.data(), kTileBytes, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(db, hb.data(), kTileBytes, cudaMemcpyHostToDevice));
  const CUtensorMap map_a = tile_map(encode, da), map_b = tile_map(encode, db);
  const int smem = 2 * kTileBytes + 1024;
  CHECK(cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));

  bool ok = true;
  const char* names[] = {"TMA + swizzled descriptors", "formula + swizzled descriptors",
                         "TMA layout against the formula"};
  for (int mode = 0; mode < 3; ++mode) {
    CHECK(cudaMemset(dout, 0, 64 * 64 * sizeof(float)));
    probe<<<1, 128, smem>>>(map_a, map_b, da, db, dout, draw, mode);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    if (mode < 2) {
      std::vector<float> got(64 * 64);
      CHECK(cudaMemcpy(got.data(), dout, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
      double worst = 0.0;
      int bad = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        const double e = std::fabs(double(got[i]) - ref[i]);
        worst = std::max(worst, e);
        bad += e > 1e-3;
      }
      std::printf("mode %d (%s): %d of 4096 wrong, worst |error| %.3g\n", mode, names[mode], bad,
                  worst);
      ok = ok && bad == 0;
    } else {
      std::vector<unsigned char> got(kTileBytes);
      CHECK(cudaMemcpy(got.data(), draw, got.size(), cudaMemcpyDeviceToHost));
      const unsigned char* src = reinterpret_cast<const unsigned char*>(ha.data());
      int bad = 0;
      for (int r = 0; r < kRows; ++r)
        for (int c = 0; c < kK; ++c) {
          const int at = r * 128 + (((c / 8) ^ (r % 8)) * 16) + (c % 8) * 2;
          bad += got[at] != src[(r * kK + c) * 2] || got[at + 1] != src[(r * kK + c) * 2 + 1];
        }
      std::printf("mode 2 (%s): %d of 4096 elements elsewhere\n", names[mode], bad);
      ok = ok && bad == 0;
    }
  }
  std::printf("%s\n", ok ? "all modes match" : "MISMATCH");
  return ok ? 0 : 1;
}
