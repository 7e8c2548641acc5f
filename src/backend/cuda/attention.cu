// Scaled dot-product attention.
//
// The fast path is a fused flash-attention kernel (FlashAttention-2's scheme) on
// the tensor cores' mma.sync m16n8k16 (f16/bf16 operands, f32 accumulators): a
// block takes 64 query rows of one (batch, head), four warps of 16 rows each;
// K and V stream through shared memory in 64-key tiles, double-buffered with
// cp.async; the scores stay in registers, softmax runs online in f32 and the
// probabilities go back to the tensor cores as f16/bf16 for P·V. The score
// matrix never exists in memory. Head dims are padded to a multiple of 16 (one
// kernel per padded size up to 160); causal masking for CLIP; self and cross
// attention alike.
//
// Where cuDNN's fused attention (attention_cudnn.cpp) is faster for a shape, by
// timing on its first call, that runs instead. On Hopper the same scheme also exists
// on warpgroup MMAs (attention_wgmma.cu, opt-in).
//
// Larger head dims (the VAE's single 512-wide head) and f32 take the general
// path: cuBLAS products over bands of query rows with an f32 softmax between
// them, so that only one band's scores exist at a time.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <functional>
#include <type_traits>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/device.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/ops.h"

// Built for GPUs older than sm_80 the kernel body below is compiled out (it needs
// cp.async and bf16 MMA), which leaves its helpers unreferenced on that pass.
#pragma nv_diag_suppress 177

namespace kiln::cuda {
namespace {

constexpr int kBlockN = 64;  // keys per tile; a block has WARPS × 16 query rows

// Output columns col and col + 1 of a row, those below d: as one 4-byte store where
// the rows are 16-byte aligned (vec), else one at a time.
template <class T>
__device__ __forceinline__ void store_pair(T* orow, int col, float a, float b, int d, bool vec) {
  if (vec) {
    if (col < d) *reinterpret_cast<uint32_t*>(orow + col) = pack2<T>(a, b);
  } else {
    if (col < d) orow[col] = from_float<T>(a);
    if (col + 1 < d) orow[col + 1] = from_float<T>(b);
  }
}

// WARPS warps, each with MT m-tiles of 16 query rows: a block takes
// WARPS × MT × 16 rows. With MT = 2 every K and V fragment a warp loads from
// shared memory feeds two MMAs, which halves the shared-memory traffic per
// FLOP (the limit with one m-tile per warp).
template <class T, int DP, int WARPS, int MT>
__global__ void __launch_bounds__(WARPS * 32, 2) flash_attention_kernel(AttentionParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // cp.async and bf16 MMA need sm_80; attention() routes older GPUs elsewhere
#else
  constexpr int kWarpRows = 16 * MT, kBlockM = WARPS * kWarpRows, kThreads = WARPS * 32;
  constexpr int kPitch = DP + 8, kTilesD = DP / 8, kStepsD = DP / 16;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sq = reinterpret_cast<T*>(smem);  // [kBlockM][kPitch]
  T* sk = sq + kBlockM * kPitch;       // [2][kBlockN][kPitch]
  T* sv = sk + 2 * kBlockN * kPitch;   // [2][kBlockN][kPitch]

  const int m0 = blockIdx.x * kBlockM, head = blockIdx.y, batch = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane >> 2, quad = lane & 3;   // mma fragment coordinates
  const int mat = lane >> 3, mat_row = lane & 7;  // ldmatrix coordinates

  const T* qg =
      static_cast<const T*>(p.q) + (int64_t(batch) * p.sq + m0) * p.q_stride + int64_t(head) * p.d;
  const T* kg =
      static_cast<const T*>(p.k) + int64_t(batch) * p.sk * p.kv_stride + int64_t(head) * p.d;
  const T* vg =
      static_cast<const T*>(p.v) + int64_t(batch) * p.sk * p.kv_stride + int64_t(head) * p.d;

  int tiles = (p.sk + kBlockN - 1) / kBlockN;
  if (p.causal) tiles = min(tiles, (m0 + kBlockM + kBlockN - 1) / kBlockN);

  load_tile<T, DP, kBlockM, kThreads>(sq, qg, min(kBlockM, p.sq - m0), p.q_stride, p.d, p.vec);
  cp_async_commit();
  load_tile<T, DP, kBlockN, kThreads>(sk, kg, min(kBlockN, p.sk), p.kv_stride, p.d, p.vec);
  load_tile<T, DP, kBlockN, kThreads>(sv, vg, min(kBlockN, p.sk), p.kv_stride, p.d, p.vec);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();

  const int warp_row0 = m0 + warp * kWarpRows;  // this warp's first query row
  // The warp's query rows as A fragments, kept in registers.
  uint32_t qf[MT][kStepsD][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int kk = 0; kk < kStepsD; ++kk)
      ldmatrix_x4(qf[mt][kk], sq + (warp * kWarpRows + mt * 16 + mat_row + (mat & 1) * 8) * kPitch +
                                  kk * 16 + (mat >> 1) * 8);

  float o[MT][kTilesD][4];
  // Running maxima of the raw scores (the scale is positive, so the same keys win).
  float row_max[MT][2], row_sum[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int t = 0; t < kTilesD; ++t) o[mt][t][0] = o[mt][t][1] = o[mt][t][2] = o[mt][t][3] = 0.0f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }

  for (int j = 0; j < tiles; ++j) {
    if (j + 1 < tiles) {
      const int n1 = (j + 1) * kBlockN, buf = (j + 1) & 1;
      load_tile<T, DP, kBlockN, kThreads>(sk + buf * kBlockN * kPitch,
                                          kg + int64_t(n1) * p.kv_stride, min(kBlockN, p.sk - n1),
                                          p.kv_stride, p.d, p.vec);
      load_tile<T, DP, kBlockN, kThreads>(sv + buf * kBlockN * kPitch,
                                          vg + int64_t(n1) * p.kv_stride, min(kBlockN, p.sk - n1),
                                          p.kv_stride, p.d, p.vec);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* kt = sk + (j & 1) * kBlockN * kPitch;
    const T* vt = sv + (j & 1) * kBlockN * kPitch;
    const int n0 = j * kBlockN;
    // A warp whose rows all come before this tile's first key has nothing to do
    // here (causal), but must still reach the barrier below.
    const bool skip = p.causal && n0 > warp_row0 + kWarpRows - 1;

    if (!skip) {
      // S = Q K^T: per m-tile, 16 rows × 64 keys in eight 16×8 accumulators.
      float s[MT][8][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int t = 0; t < 8; ++t) s[mt][t][0] = s[mt][t][1] = s[mt][t][2] = s[mt][t][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kStepsD; ++kk) {
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          uint32_t kb[4];
          ldmatrix_x4(kb,
                      kt + (np * 16 + mat_row + (mat >> 1) * 8) * kPitch + kk * 16 + (mat & 1) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_16816<T>(s[mt][2 * np], qf[mt][kk], kb[0], kb[1]);
            mma_16816<T>(s[mt][2 * np + 1], qf[mt][kk], kb[2], kb[3]);
          }
        }
      }

      // Mask keys past the end and (causal) the future: only tiles that reach them.
      if (n0 + kBlockN > p.sk || (p.causal && n0 + kBlockN - 1 > warp_row0)) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int t = 0; t < 8; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int key = n0 + t * 8 + quad * 2 + (e & 1);
              const int qi = warp_row0 + mt * 16 + group + (e >> 1) * 8;
              if (key >= p.sk || (p.causal && key > qi)) s[mt][t][e] = -INFINITY;
            }
      }

      // Online softmax: p = 2^(s·scale·log2e − max·scale·log2e), one FFMA and one MUFU each.
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float mx = -INFINITY;
#pragma unroll
          for (int t = 0; t < 8; ++t) mx = fmaxf(mx, fmaxf(s[mt][t][2 * r], s[mt][t][2 * r + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float new_max = fmaxf(row_max[mt][r], mx);
          // A row that has seen only masked keys so far keeps everything at zero.
          const float base = new_max == -INFINITY ? 0.0f : new_max * p.scale_log2;
          const float correction = fast_exp2(row_max[mt][r] * p.scale_log2 - base);
          row_max[mt][r] = new_max;
          float sum = 0.0f;
#pragma unroll
          for (int t = 0; t < 8; ++t) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float pv = fast_exp2(fmaf(s[mt][t][2 * r + e], p.scale_log2, -base));
              s[mt][t][2 * r + e] = pv;
              sum += pv;
            }
          }
          row_sum[mt][r] = row_sum[mt][r] * correction + sum;
#pragma unroll
          for (int t = 0; t < kTilesD; ++t) {
            o[mt][t][2 * r] *= correction;
            o[mt][t][2 * r + 1] *= correction;
          }
        }
      }

      // O += P V: the score accumulators are already laid out as A fragments.
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          pa[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          pa[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          pa[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          pa[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < kStepsD; ++dp) {
          uint32_t vb[4];
          ldmatrix_x4_trans(
              vb, vt + (kk * 16 + mat_row + (mat & 1) * 8) * kPitch + dp * 16 + (mat >> 1) * 8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_16816<T>(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
            mma_16816<T>(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
          }
        }
      }
    }
    __syncthreads();  // this buffer is refilled two iterations on
  }

  // The four threads of a row hold parts of its sum.
  T* og = static_cast<T*>(p.out) + int64_t(batch) * p.sq * p.o_stride + int64_t(head) * p.d;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float total = row_sum[mt][r];
      total += __shfl_xor_sync(0xffffffffu, total, 1);
      total += __shfl_xor_sync(0xffffffffu, total, 2);
      const float inv = total > 0.0f ? 1.0f / total : 0.0f;
      const int qi = warp_row0 + mt * 16 + group + r * 8;
      if (qi >= p.sq) continue;
      T* orow = og + int64_t(qi) * p.o_stride;
#pragma unroll
      for (int t = 0; t < kTilesD; ++t) {
        const int col = t * 8 + quad * 2;
        const float a = o[mt][t][2 * r] * inv, b = o[mt][t][2 * r + 1] * inv;
        store_pair<T>(orow, col, a, b, p.d, p.vec);
      }
    }
  }
#endif
}

// False, launching nothing, where the block's shared memory is over the device's limit
// (shared_memory_limit).
template <class T, int DP, int WARPS, int MT>
bool launch_flash(const AttentionParams& p, int batch, int heads) {
  constexpr int kBlockM = WARPS * 16 * MT;
  constexpr size_t kSmem = size_t(kBlockM + 4 * kBlockN) * (DP + 8) * sizeof(T);
  if (kSmem > shared_memory_limit()) return false;
  static const bool configured = [] {
    CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<T, DP, WARPS, MT>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem)));
    return true;
  }();
  (void)configured;
  const dim3 grid{unsigned((p.sq + kBlockM - 1) / kBlockM), unsigned(heads), unsigned(batch)};
  flash_attention_kernel<T, DP, WARPS, MT><<<grid, WARPS * 32, kSmem, stream()>>>(p);
  CUDA_CHECK_LAUNCH();
  return true;
}

// Attention over at most NK keys without a causal mask: cross-attention on the text's
// 77 tokens (NK 80) or up to 128 (NK 128). Four warps of 16 query rows, 64 rows a
// block, as the flash kernel's short-KV blocks; what differs is that the keys are one
// tile of NK: K and V are loaded once and padded to NK, not to two 64-key tiles, and
// the softmax takes one pass. At 77 keys that is 37% fewer MMAs, and at head dim 64
// 32 KB of shared memory a block against 46.
// UNROLL: Q, K and V loaded by straight-line copies (load_tile's UNROLL;
// options().flash_short_kv_unrolled).
template <class T, int DP, int NK, bool UNROLL>
__global__ void __launch_bounds__(128) flash_short_kv_kernel(AttentionParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  constexpr int kBlockM = 64, kThreads = 128;
  constexpr int kPitch = DP + 8, kTilesD = DP / 8, kStepsD = DP / 16;
  constexpr int kTilesN = NK / 8, kStepsN = NK / 16;
  static_assert(NK % 16 == 0, "keys in steps of 16");
  extern __shared__ __align__(16) unsigned char smem[];
  T* sq = reinterpret_cast<T*>(smem);  // [kBlockM][kPitch]
  T* sk = sq + kBlockM * kPitch;       // [NK][kPitch]
  T* sv = sk + NK * kPitch;            // [NK][kPitch]

  const int m0 = blockIdx.x * kBlockM, head = blockIdx.y, batch = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane >> 2, quad = lane & 3;
  const int mat = lane >> 3, mat_row = lane & 7;
  const T* qg =
      static_cast<const T*>(p.q) + (int64_t(batch) * p.sq + m0) * p.q_stride + int64_t(head) * p.d;
  const T* kg =
      static_cast<const T*>(p.k) + int64_t(batch) * p.sk * p.kv_stride + int64_t(head) * p.d;
  const T* vg =
      static_cast<const T*>(p.v) + int64_t(batch) * p.sk * p.kv_stride + int64_t(head) * p.d;

  // Q and K first; V lands while the scores and the softmax run.
  load_tile<T, DP, kBlockM, kThreads, UNROLL>(sq, qg, min(kBlockM, p.sq - m0), p.q_stride, p.d,
                                              p.vec);
  load_tile<T, DP, NK, kThreads, UNROLL>(sk, kg, p.sk, p.kv_stride, p.d, p.vec);
  cp_async_commit();
  load_tile<T, DP, NK, kThreads, UNROLL>(sv, vg, p.sk, p.kv_stride, p.d, p.vec);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();

  uint32_t qf[kStepsD][4];
#pragma unroll
  for (int kk = 0; kk < kStepsD; ++kk)
    ldmatrix_x4(qf[kk], sq + (warp * 16 + mat_row + (mat & 1) * 8) * kPitch + kk * 16 +
                            (mat >> 1) * 8);

  // S = Q K^T: 16 rows × NK keys a warp.
  float s[kTilesN][4];
#pragma unroll
  for (int t = 0; t < kTilesN; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < kStepsD; ++kk) {
#pragma unroll
    for (int np = 0; np < kTilesN / 2; ++np) {
      uint32_t kb[4];
      ldmatrix_x4(kb, sk + (np * 16 + mat_row + (mat >> 1) * 8) * kPitch + kk * 16 + (mat & 1) * 8);
      mma_16816<T>(s[2 * np], qf[kk], kb[0], kb[1]);
      mma_16816<T>(s[2 * np + 1], qf[kk], kb[2], kb[3]);
    }
  }
  // The padding keys (zeros in shared memory) take no weight.
  if (p.sk < NK) {
#pragma unroll
    for (int t = 0; t < kTilesN; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (t * 8 + quad * 2 + (e & 1) >= p.sk) s[t][e] = -INFINITY;
  }

  // One-pass softmax (unnormalised; the row sums divide at the end).
  float row_sum[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int t = 0; t < kTilesN; ++t) mx = fmaxf(mx, fmaxf(s[t][2 * r], s[t][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float base = mx == -INFINITY ? 0.0f : mx * p.scale_log2;
    float sum = 0.0f;
#pragma unroll
    for (int t = 0; t < kTilesN; ++t) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float pv = fast_exp2(fmaf(s[t][2 * r + e], p.scale_log2, -base));
        s[t][2 * r + e] = pv;
        sum += pv;
      }
    }
    row_sum[r] = sum;
  }

  cp_async_wait<0>();
  __syncthreads();

  // O = P V: the score accumulators are already laid out as A fragments.
  float o[kTilesD][4];
#pragma unroll
  for (int t = 0; t < kTilesD; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < kStepsN; ++kk) {
    uint32_t pa[4];
    pa[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
    pa[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
    pa[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    pa[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
    for (int dp = 0; dp < kStepsD; ++dp) {
      uint32_t vb[4];
      ldmatrix_x4_trans(vb,
                        sv + (kk * 16 + mat_row + (mat & 1) * 8) * kPitch + dp * 16 + (mat >> 1) * 8);
      mma_16816<T>(o[2 * dp], pa, vb[0], vb[1]);
      mma_16816<T>(o[2 * dp + 1], pa, vb[2], vb[3]);
    }
  }

  T* og = static_cast<T*>(p.out) + int64_t(batch) * p.sq * p.o_stride + int64_t(head) * p.d;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total = row_sum[r];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    const int qi = m0 + warp * 16 + group + r * 8;
    if (qi >= p.sq) continue;
    T* orow = og + int64_t(qi) * p.o_stride;
#pragma unroll
    for (int t = 0; t < kTilesD; ++t) {
      const int col = t * 8 + quad * 2;
      const float a = o[t][2 * r] * inv, b = o[t][2 * r + 1] * inv;
      store_pair<T>(orow, col, a, b, p.d, p.vec);
    }
  }
#endif
}

std::atomic<size_t> g_short_kv_calls{0}, g_short_kv_unrolled_calls{0};

template <class T, int DP, int NK, bool UNROLL>
bool launch_flash_short_kv(const AttentionParams& p, int batch, int heads) {
  constexpr size_t kSmem = size_t(64 + 2 * NK) * (DP + 8) * sizeof(T);
  if (kSmem > shared_memory_limit()) return false;
  static const bool configured = [] {
    CUDA_CHECK(cudaFuncSetAttribute(flash_short_kv_kernel<T, DP, NK, UNROLL>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem)));
    return true;
  }();
  (void)configured;
  const dim3 grid{unsigned((p.sq + 63) / 64), unsigned(heads), unsigned(batch)};
  flash_short_kv_kernel<T, DP, NK, UNROLL><<<grid, 128, kSmem, stream()>>>(p);
  CUDA_CHECK_LAUNCH();
  ++g_short_kv_calls;
  if constexpr (UNROLL) ++g_short_kv_unrolled_calls;
  return true;
}

// The short-KV kernel where flash_short_kv_takes the call, it has no causal mask and the
// kernel fits the device's shared memory; false otherwise.
template <class T>
bool flash_short_kv(const AttentionParams& p, int batch, int heads, int dp) {
  if (p.causal || !flash_short_kv_takes(p.sk)) return false;
  const bool short80 = p.sk <= 80, unrolled = options().flash_short_kv_unrolled;
  auto launch = [&](auto d) {
    constexpr int D = decltype(d)::value;
    if (unrolled)
      return short80 ? launch_flash_short_kv<T, D, 80, true>(p, batch, heads)
                     : launch_flash_short_kv<T, D, 128, true>(p, batch, heads);
    return short80 ? launch_flash_short_kv<T, D, 80, false>(p, batch, heads)
                   : launch_flash_short_kv<T, D, 128, false>(p, batch, heads);
  };
  switch (dp) {
    case 32: return launch(std::integral_constant<int, 32>{});
    case 48: return launch(std::integral_constant<int, 48>{});
    case 64: return launch(std::integral_constant<int, 64>{});
    case 80: return launch(std::integral_constant<int, 80>{});
    case 128: return launch(std::integral_constant<int, 128>{});
    case 160: return launch(std::integral_constant<int, 160>{});
  }
  return false;
}

// The padded head dims there are kernels for; 0 when d is too large.
int padded_head_dim(int d) {
  for (int dp : {32, 48, 64, 80, 128, 160})
    if (d <= dp) return dp;
  return 0;
}

// Head dims up to 64: 128 query rows a block, as eight warps of one m-tile (the
// default) or four warps of two (options().flash_two_tiles_per_warp). With at most two
// key tiles (cross-attention on 77 text tokens) a block has little work, and SDXL's
// 1024 × 77 calls made 320 blocks of eight warps for 132 multiprocessors (17 µs a call
// on an H200 where the bytes take about 3): with options().flash_short_kv_blocks, 64
// rows a block there, four warps of one m-tile, twice the blocks (the default since
// a same-run A/B: SDXL's 60 calls 1.03 -> 0.93 ms a step).
// Larger head dims: 64 rows, four warps of one m-tile (registers).
// False where no flash kernel fits the device's shared memory (head dim 160 on GPUs
// with 99 KB a block); the caller takes the banded path.
template <class T>
bool flash(const AttentionParams& p, int batch, int heads, int dp) {
  if (flash_short_kv<T>(p, batch, heads, dp)) return true;
  if (flash_wgmma<T>(p, batch, heads, dp)) return true;
  const bool two = options().flash_two_tiles_per_warp;
  const bool short_kv = !two && options().flash_short_kv_blocks && p.sk <= 2 * kBlockN;
  switch (dp) {
    case 32:
      if (short_kv) return launch_flash<T, 32, 4, 1>(p, batch, heads);
      return two ? launch_flash<T, 32, 4, 2>(p, batch, heads)
                 : launch_flash<T, 32, 8, 1>(p, batch, heads);
    case 48:
      if (short_kv) return launch_flash<T, 48, 4, 1>(p, batch, heads);
      return two ? launch_flash<T, 48, 4, 2>(p, batch, heads)
                 : launch_flash<T, 48, 8, 1>(p, batch, heads);
    case 64:
      if (short_kv) return launch_flash<T, 64, 4, 1>(p, batch, heads);
      return two ? launch_flash<T, 64, 4, 2>(p, batch, heads)
                 : launch_flash<T, 64, 8, 1>(p, batch, heads);
    case 80:
      return launch_flash<T, 80, 4, 1>(p, batch, heads);
    case 128:
      return launch_flash<T, 128, 4, 1>(p, batch, heads);
    case 160:
      return launch_flash<T, 160, 4, 1>(p, batch, heads);
  }
  KILN_FAIL("flash attention: no kernel for padded head dim ", dp);
}

// ---------------------------------------------------------------------------
// The general path: scores for a band of query rows (all heads of one batch
// row) by one batched GEMM into f32, softmax into the operand type, then P·V.

template <class T>
__global__ void softmax_rows_kernel(const float* scores, T* probs, int sk, int rows_per_head,
                                    int q0, bool causal) {
  const int64_t row = blockIdx.x;
  const float* s = scores + row * sk;
  T* out = probs + row * sk;
  const int qi = q0 + int(row % rows_per_head);
  const int visible = causal ? min(sk, qi + 1) : sk;
  __shared__ float reduce[32];
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < visible; j += blockDim.x) mx = fmaxf(mx, s[j]);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (threadIdx.x % 32 == 0) reduce[threadIdx.x / 32] = mx;
  __syncthreads();
  mx = -INFINITY;
  for (int w = 0; w < int(blockDim.x / 32); ++w) mx = fmaxf(mx, reduce[w]);
  __syncthreads();
  float sum = 0.0f;
  for (int j = threadIdx.x; j < visible; j += blockDim.x) sum += expf(s[j] - mx);
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (threadIdx.x % 32 == 0) reduce[threadIdx.x / 32] = sum;
  __syncthreads();
  sum = 0.0f;
  for (int w = 0; w < int(blockDim.x / 32); ++w) sum += reduce[w];
  const float inv = 1.0f / sum;
  for (int j = threadIdx.x; j < sk; j += blockDim.x)
    out[j] = from_float<T>(j < visible ? expf(s[j] - mx) * inv : 0.0f);
}

// Rows of up to kHeldColumns scores, each read once from memory into registers
// (V float4s a thread): the max, the exponentials and their sum from there, one
// write. The kernel above reads a row three times; on the VAE's 16384-wide rows
// it was most of the attention's time.
constexpr int kHeldColumns = 16384;

template <class T, int V>
__global__ void softmax_rows_held_kernel(const float* scores, T* probs, int sk, int rows_per_head,
                                         int q0, bool causal) {
  const int64_t row = blockIdx.x;
  const float4* s = reinterpret_cast<const float4*>(scores + row * sk);
  T* out = probs + row * sk;
  const int qi = q0 + int(row % rows_per_head);
  const int visible = causal ? min(sk, qi + 1) : sk;
  __shared__ float red[32];
  float x[V][4];
  float mx = -INFINITY;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int c = (k * int(blockDim.x) + int(threadIdx.x)) * 4;
    float4 f = make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
    if (c < sk) f = __ldcs(s + c / 4);  // read once: keep it out of the caches' way
    x[k][0] = c + 0 < visible ? f.x : -INFINITY;
    x[k][1] = c + 1 < visible ? f.y : -INFINITY;
    x[k][2] = c + 2 < visible ? f.z : -INFINITY;
    x[k][3] = c + 3 < visible ? f.w : -INFINITY;
#pragma unroll
    for (int j = 0; j < 4; ++j) mx = fmaxf(mx, x[k][j]);
  }
  mx = block_reduce(mx, red, true);
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < V; ++k)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      x[k][j] = expf(x[k][j] - mx);  // 0 where masked
      sum += x[k][j];
    }
  const float inv = 1.0f / block_reduce(sum, red, false);
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int c = (k * int(blockDim.x) + int(threadIdx.x)) * 4;
    if (c >= sk) continue;
    Pack<T, 4> r;
#pragma unroll
    for (int j = 0; j < 4; ++j) r.v[j] = from_float<T>(x[k][j] * inv);
    *reinterpret_cast<Pack<T, 4>*>(out + c) = r;
  }
}

template <class T>
void softmax_rows(const float* scores, T* probs, int sk, int rows, int rows_per_head, int q0,
                  bool causal) {
  if (sk % 4 != 0 || sk > kHeldColumns) {
    softmax_rows_kernel<T>
        <<<unsigned(rows), 256, 0, stream()>>>(scores, probs, sk, rows_per_head, q0, causal);
    CUDA_CHECK_LAUNCH();
    return;
  }
  // Up to 512 threads, each with the fewest float4s that cover the row.
  auto launch = [&](auto held) {
    constexpr int V = decltype(held)::value;
    const int per_thread = (sk / 4 + V - 1) / V;  // threads that cover the row
    const int threads = std::max(32, (per_thread + 31) / 32 * 32);
    softmax_rows_held_kernel<T, V><<<unsigned(rows), unsigned(threads), 0, stream()>>>(
        scores, probs, sk, rows_per_head, q0, causal);
  };
  if (sk <= 2048)
    launch(std::integral_constant<int, 1>{});
  else if (sk <= 4096)
    launch(std::integral_constant<int, 2>{});
  else if (sk <= 8192)
    launch(std::integral_constant<int, 4>{});
  else
    launch(std::integral_constant<int, 8>{});
  CUDA_CHECK_LAUNCH();
}

cudaDataType_t blas_type(DType t) {
  return t == DType::F32 ? CUDA_R_32F : t == DType::F16 ? CUDA_R_16F : CUDA_R_16BF;
}

constexpr size_t kScoreBudget = size_t(256) << 20;

void attention_banded(const AttentionArgs& a) {
  const int batch = int(a.q.dim(0)), sq = int(a.q.dim(1)), sk = int(a.k.dim(1));
  const int heads = a.heads, d = int(a.features()) / heads;
  const int64_t q_stride = a.q.dim(2), kv_stride = a.k.dim(2), o_stride = a.out.dim(2);
  const size_t elem = dtype_size(a.q.dtype());
  const char* q = static_cast<const char*>(a.q.raw()) + size_t(a.q_col) * elem;
  const char* k = static_cast<const char*>(a.k.raw()) + size_t(a.k_col) * elem;
  const char* v = static_cast<const char*>(a.v.raw()) + size_t(a.v_col) * elem;
  const cudaDataType_t type = blas_type(a.q.dtype());
  const int band = int(std::clamp<int64_t>(
      int64_t(kScoreBudget / (size_t(heads) * sk * (sizeof(float) + elem))), 1, sq));
  const auto scores = scratch(size_t(heads) * band * sk * sizeof(float));
  const auto probs = scratch(size_t(heads) * band * sk * elem);
  cublasHandle_t blas = context().blas;
  const float zero = 0.0f, one = 1.0f;
  for (int b = 0; b < batch; ++b) {
    const char* qb = q + size_t(b) * sq * q_stride * elem;
    const char* kb = k + size_t(b) * sk * kv_stride * elem;
    const char* vb = v + size_t(b) * sk * kv_stride * elem;
    char* ob = static_cast<char*>(a.out.raw()) + size_t(b) * sq * o_stride * elem;
    for (int q0 = 0; q0 < sq; q0 += band) {
      const int n = std::min(band, sq - q0);
      // scores[h] (column-major sk × n) = K_h^T-as-stored · Q_h band, times the scale.
      CUBLAS_CHECK(cublasGemmStridedBatchedEx(
          blas, CUBLAS_OP_T, CUBLAS_OP_N, sk, n, d, &a.scale, kb, type, int(kv_stride), d,
          qb + size_t(q0) * q_stride * elem, type, int(q_stride), d, &zero, scores->data(),
          CUDA_R_32F, sk, int64_t(n) * sk, heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      dispatch_float(a.q.dtype(), [&](auto tag) {
        using T = decltype(tag);
        softmax_rows<T>(static_cast<const float*>(scores->data()), static_cast<T*>(probs->data()),
                        sk, heads * n, n, q0, a.causal);
      });
      // out[h] (column-major d × n, token stride o_stride) = V_h · P_h.
      CUBLAS_CHECK(cublasGemmStridedBatchedEx(
          blas, CUBLAS_OP_N, CUBLAS_OP_N, d, n, sk, &one, vb, type, int(kv_stride), d,
          probs->data(), type, sk, int64_t(n) * sk, &zero, ob + size_t(q0) * o_stride * elem, type,
          int(o_stride), d, heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  }
}

}  // namespace

bool flash_short_kv_takes(int64_t sk) {
  return options().flash_short_kv_kernel && sk <= 128;
}

size_t flash_short_kv_calls() {
  return g_short_kv_calls.load();
}

size_t flash_short_kv_unrolled_calls() {
  return g_short_kv_unrolled_calls.load();
}

void attention(const AttentionArgs& a) {
  const int batch = int(a.q.dim(0)), sq = int(a.q.dim(1)), sk = int(a.k.dim(1));
  const int heads = a.heads, d = int(a.features()) / heads;
  if (int64_t(batch) * sq == 0) return;
  // k and v share one row stride in both kernels (they are one packed tensor or two
  // of one width).
  KILN_CHECK(a.k.dim(2) == a.v.dim(2), "attention: k ", a.k.describe(), " and v ", a.v.describe(),
             " have different row widths");
  count_flops(attention_flops(a));
  const int dp = padded_head_dim(d);
  const DType dtype = a.q.dtype();
  // The fused kernel needs sm_80 (cp.async, bf16 MMA); older GPUs take the banded path.
  static const bool flash_capable = device_info().compute_major >= 8;
  if (!flash_capable || dtype == DType::F32 || sk == 0) return attention_banded(a);
  std::function<void()> ours = [&] { attention_banded(a); };
  AttentionParams p{};
  if (options().use_flash_attention && dp > 0) {
    const size_t elem = dtype_size(dtype);
    p.q = static_cast<const char*>(a.q.raw()) + size_t(a.q_col) * elem;
    p.k = static_cast<const char*>(a.k.raw()) + size_t(a.k_col) * elem;
    p.v = static_cast<const char*>(a.v.raw()) + size_t(a.v_col) * elem;
    p.out = a.out.raw();
    p.q_stride = a.q.dim(2);
    p.kv_stride = a.k.dim(2);
    p.o_stride = a.out.dim(2);
    p.sq = sq;
    p.sk = sk;
    p.d = d;
    p.scale_log2 = a.scale * 1.4426950408889634f;
    p.causal = a.causal;
    p.vec = d % 8 == 0 && aligned16(p.q) && aligned16(p.k) && aligned16(p.v) && aligned16(p.out);
    ours = [&] {
      const bool ran = dtype == DType::F16 ? flash<half>(p, batch, heads, dp)
                                           : flash<bfloat16>(p, batch, heads, dp);
      if (!ran) attention_banded(a);
    };
  }
  if (!attention_cudnn(a, ours)) ours();
}

}  // namespace kiln::cuda
