// The few-output narrow convolutions' kernels, for conv_narrow_{f16,bf16,f32}.cu: each
// of those files instantiates conv_few_out for one type, so that the three build side
// by side. Their unrolled loops made one file of all three types take 50 s, the longest
// of the build; a file a type takes 15-22 s.
#pragma once

#include <type_traits>

#include "backend/cuda/conv_narrow.cuh"
#include "backend/cuda/device.cuh"
#include "backend/cuda/mma.cuh"

namespace kiln::cuda {
namespace narrow_detail {

// Elements of the staged input tile (a 16-byte multiple: the weights follow it).
template <class T, int WARPS, int ROWS>
__host__ __device__ constexpr size_t few_out_staged_elems() {
  return size_t(WARPS * ROWS + 2) * 34 * (kNarrowChunk + kVec<T>);
}

template <class T, int O, int WARPS, int ROWS>
size_t few_out_smem() {
  return few_out_staged_elems<T, WARPS, ROWS>() * sizeof(T) + size_t(O) * 9 * kNarrowChunk * 4;
}

// The folded GroupNorm's scale and shift (p.scale set) of image b's V channels from c
// (16-byte aligned: C is a multiple of 32).
template <int V>
__device__ __forceinline__ void load_norm(const NarrowParams& p, int b, int c, float (&sc)[V],
                                          float (&sh)[V]) {
  load_scale_shift(p.scale, p.shift, int64_t(b) * p.c + c, sc, sh);
}

// Few outputs (O of them, all made by each thread): a block makes a tile of 32 output
// pixels by WARPS·ROWS rows, ROWS a thread, over the input channels in chunks of 32
// staged in shared memory with a one-pixel halo. A staged pixel is its chunk plus 16
// bytes, so that the 16-byte reads of a warp's consecutive pixels fall in distinct banks.
template <class T, int O, int WARPS, int ROWS>
__global__ void __launch_bounds__(WARPS * 32) conv3x3_few_out(NarrowParams p) {
  constexpr int V = kVec<T>, kStride = kNarrowChunk + V, kVecs = kNarrowChunk / V;
  constexpr int kTileH = WARPS * ROWS, kHaloW = 34;
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);
  float* ws = reinterpret_cast<float*>(smem + few_out_staged_elems<T, WARPS, ROWS>() * sizeof(T));
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int x0 = blockIdx.x * 32, y0 = blockIdx.y * kTileH, b = blockIdx.z;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  float acc[ROWS][O] = {};
  // A thread stages the same V channels of every pixel (the block's threads are a
  // multiple of kVecs), so the folded GroupNorm's scale and shift are loaded once a chunk.
  static_assert(WARPS * 32 % kVecs == 0);
  const int v = threadIdx.x % kVecs;
  float sc[V] = {}, sh[V] = {};
  for (int c0 = 0; c0 < p.c; c0 += kNarrowChunk) {
    if (p.scale) load_norm(p, b, c0 + v * V, sc, sh);
    __syncthreads();
    for (int i = threadIdx.x; i < (kTileH + 2) * kHaloW * kVecs; i += WARPS * 32) {
      const int pix = i / kVecs;
      const int gy = y0 - 1 + pix / kHaloW, gx = x0 - 1 + pix % kHaloW;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (gy >= 0 && gy < p.h && gx >= 0 && gx < p.w) {
        val = *reinterpret_cast<const uint4*>(x + ((int64_t(b) * p.h + gy) * p.w + gx) * p.c + c0 +
                                              v * V);
        if (p.scale) {
          const Pack<T, V> read = reinterpret_cast<const Pack<T, V>&>(val);
          reinterpret_cast<Pack<T, V>&>(val) = apply_scale_shift(read, sc, sh, p.act);
        }
      }
      *reinterpret_cast<uint4*>(xs + pix * kStride + v * V) = val;
    }
    for (int i = threadIdx.x; i < O * 9 * kNarrowChunk; i += WARPS * 32) {
      const int ot = i / kNarrowChunk, ch = i - ot * kNarrowChunk;  // ot = o * 9 + tap
      ws[i] = to_float(w[int64_t(ot) * p.c + c0 + ch]);
    }
    __syncthreads();
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) {
      const int ky = tap / 3, kx = tap % 3;
#pragma unroll
      for (int u = 0; u < kVecs; ++u) {
        float xf[ROWS][V];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(
              xs + ((ty + WARPS * r + ky) * kHaloW + tx + kx) * kStride + u * V);
#pragma unroll
          for (int e = 0; e < V; ++e) xf[r][e] = to_float(pk.v[e]);
        }
#pragma unroll
        for (int o = 0; o < O; ++o) {
          const float* wv = ws + (o * 9 + tap) * kNarrowChunk + u * V;
#pragma unroll
          for (int e = 0; e < V; ++e)
#pragma unroll
            for (int r = 0; r < ROWS; ++r) acc[r][o] = fmaf(xf[r][e], wv[e], acc[r][o]);
        }
      }
    }
  }
  const T* bias = static_cast<const T*>(p.bias);
  const T* residual = static_cast<const T*>(p.residual);
  T* y = static_cast<T*>(p.y);
  const int ox = x0 + tx;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int oy = y0 + ty + WARPS * r;
    if (oy >= p.h || ox >= p.w) continue;
    const int64_t at = ((int64_t(b) * p.h + oy) * p.w + ox) * O;
#pragma unroll
    for (int o = 0; o < O; ++o) {
      float v = acc[r][o];
      if (bias) v += to_float(bias[o]);
      if (residual) v += to_float(residual[at + o]);
      y[at + o] = from_float<T>(v);
    }
  }
}

template <class T, int O, int WARPS, int ROWS>
void launch_few_out(const NarrowParams& p, int n) {
  constexpr int kTileH = WARPS * ROWS;
  const size_t smem = few_out_smem<T, O, WARPS, ROWS>();
  // Shared memory past 48 KiB is opted into once per instantiation.
  static const bool opted = [&] {
    CUDA_CHECK(cudaFuncSetAttribute(conv3x3_few_out<T, O, WARPS, ROWS>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    return true;
  }();
  (void)opted;
  const dim3 grid(unsigned((p.w + 31) / 32), unsigned((p.h + kTileH - 1) / kTileH), unsigned(n));
  conv3x3_few_out<T, O, WARPS, ROWS><<<grid, WARPS * 32, smem, stream()>>>(p);
  CUDA_CHECK_LAUNCH();
}

template <class T, int O>
void few_out(const NarrowParams& p, int n) {
  // Eight warps of two rows each where that makes two blocks per multiprocessor; small
  // images (SD1.5's 64×64 latents) take four warps of one row, for more blocks, as do
  // GPUs whose blocks cannot have the larger blocks' shared memory (97 KB in f32; 64 KB
  // a block on sm_75).
  const int64_t big_blocks = int64_t((p.w + 31) / 32) * ((p.h + 15) / 16) * n;
  if (big_blocks >= 2 * int64_t(context().props.multiProcessorCount) &&
      few_out_smem<T, O, 8, 2>() <= shared_memory_limit())
    launch_few_out<T, O, 8, 2>(p, n);
  else
    launch_few_out<T, O, 4, 1>(p, n);
}

// Few outputs on the tensor cores (f16/bf16): an implicit GEMM, M the output pixels, N
// the O outputs padded to 8 (one m16n8k16 column tile), K = 9·C. A block makes 32
// columns by kRows rows. Each stage holds 32·KS input channels of its tile with a
// one-pixel halo, and the same channels of the weights, copied by cp.async one stage
// ahead of the MMAs. Warp w takes ROWS consecutive output rows (from (w / KS)·ROWS) and
// 32 of the stage's channels (from 32·(w % KS)); each halo row it needs is read from
// shared memory once per column offset and feeds the MMAs of up to three output rows.
// The KS warps of a row group sum their parts in a fixed order at the end. The
// CUDA-core kernel above does 3 FMAs per input value it reads from shared memory;
// here an ldmatrix of 16 pixels × 16 channels feeds an MMA of 16 × 8 × 16.
template <int WARPS, int ROWS, int KS>
struct FewOutMma {
  static constexpr int kRows = WARPS / KS * ROWS;  // output rows of a block
  static constexpr int kChannels = 32 * KS;        // input channels of a stage
  // Elements per staged pixel: 16 bytes over, so that ldmatrix's eight rows (and the
  // weights' eight outputs) fall in distinct banks.
  static constexpr int kPitch = kChannels + 8;
  static constexpr int kHaloW = 34;
  static constexpr int kStageX = (kRows + 2) * kHaloW * kPitch;
  static constexpr int kStageW = 8 * 9 * kPitch;  // [o][tap][channel], o padded to 8
  static constexpr int kStage = kStageX + kStageW;
  static size_t smem(size_t element) { return 2 * size_t(kStage) * element; }
};

template <class T, int O, int WARPS, int ROWS, int KS>
__global__ void __launch_bounds__(WARPS * 32) conv3x3_few_out_mma(NarrowParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // cp.async and bf16 MMA need sm_80; conv_narrow routes older GPUs elsewhere
#else
  using F = FewOutMma<WARPS, ROWS, KS>;
  static_assert(WARPS % KS == 0 && O <= 8);
  constexpr int kPieces = F::kChannels / 8;  // 16-byte copies per staged pixel
  extern __shared__ __align__(16) unsigned char smem[];
  T* stages = reinterpret_cast<T*>(smem);  // [2][kStage]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int split = warp % KS, r0 = warp / KS * ROWS;
  const int x0 = blockIdx.x * 32, y0 = blockIdx.y * F::kRows, b = blockIdx.z;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  const int count = (p.c + F::kChannels - 1) / F::kChannels;

  // Stage s: input channels s·kChannels on, zeros outside the image and past C.
  auto load = [&](int s) {
    T* xs = stages + (s & 1) * F::kStage;
    T* ws = xs + F::kStageX;
    const int c0 = s * F::kChannels;
    for (int i = threadIdx.x; i < (F::kRows + 2) * F::kHaloW * kPieces; i += WARPS * 32) {
      const int pix = i / kPieces, piece = i - pix * kPieces;
      const int gy = y0 - 1 + pix / F::kHaloW, gx = x0 - 1 + pix % F::kHaloW;
      const int ch = c0 + piece * 8;
      const bool in = gy >= 0 && gy < p.h && gx >= 0 && gx < p.w && ch < p.c;
      cp_async_16(xs + pix * F::kPitch + piece * 8,
                  in ? x + ((int64_t(b) * p.h + gy) * p.w + gx) * p.c + ch : x, in ? 16 : 0);
    }
    for (int i = threadIdx.x; i < 8 * 9 * kPieces; i += WARPS * 32) {
      const int ot = i / kPieces, piece = i - ot * kPieces;  // ot = o·9 + tap (OHWI)
      const int ch = c0 + piece * 8;
      const bool in = ot < O * 9 && ch < p.c;
      cp_async_16(ws + ot * F::kPitch + piece * 8, in ? w + int64_t(ot) * p.c + ch : w,
                  in ? 16 : 0);
    }
    cp_async_commit();
  };

  float acc[ROWS][2][4] = {};
  // This lane's row of ldmatrix's four 8×8 matrices: pixels 0-7 / 8-15, channels 0-7 / 8-15.
  const int a_pix = (lane & 7) + ((lane >> 3) & 1) * 8, a_ch = (lane >> 4) * 8;
  const int g = lane >> 2, t = lane & 3;  // fragment coordinates: output g, channels 2t, 2t+1
  // The folded GroupNorm (p.scale set), applied by each thread to its own copies of
  // stage s once they have landed, before the barrier that shows them to the others. A
  // thread copies the same 8 channels of every pixel (the block's threads are a
  // multiple of kPieces).
  static_assert(WARPS * 32 % kPieces == 0);
  auto normalise_stage = [&](int s) {
    const int piece = threadIdx.x % kPieces, ch = s * F::kChannels + piece * 8;
    if (ch >= p.c) return;
    float sc[8], sh[8];
    load_norm(p, b, ch, sc, sh);
    T* xs = stages + (s & 1) * F::kStage;
    for (int i = threadIdx.x; i < (F::kRows + 2) * F::kHaloW * kPieces; i += WARPS * 32) {
      const int pix = i / kPieces;
      const int gy = y0 - 1 + pix / F::kHaloW, gx = x0 - 1 + pix % F::kHaloW;
      if (gy < 0 || gy >= p.h || gx < 0 || gx >= p.w) continue;  // padding: stays zero
      auto* at = reinterpret_cast<Pack<T, 8>*>(xs + pix * F::kPitch + piece * 8);
      const Pack<T, 8> staged = *at;  // one 16-byte access each way
      *at = apply_scale_shift(staged, sc, sh, p.act);
    }
  };
  load(0);
  for (int s = 0; s < count; ++s) {
    if (s + 1 < count) {
      load(s + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    if (p.scale) normalise_stage(s);
    __syncthreads();
    const T* xs = stages + (s & 1) * F::kStage;
    const T* ws = xs + F::kStageX;
    if (s * F::kChannels + split * 32 < p.c) {
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        const int ch = split * 32 + kk * 16;
        uint32_t bf[9][2];
#pragma unroll
        for (int tap = 0; tap < 9; ++tap) {
          const T* wp = ws + (g * 9 + tap) * F::kPitch + ch + 2 * t;
          bf[tap][0] = *reinterpret_cast<const uint32_t*>(wp);
          bf[tap][1] = *reinterpret_cast<const uint32_t*>(wp + 8);
        }
#pragma unroll
        for (int kx = 0; kx < 3; ++kx)
#pragma unroll
          for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int hr = 0; hr < ROWS + 2; ++hr) {  // halo row r0 + hr: output rows hr - ky
              uint32_t a[4];
              ldmatrix_x4(
                  a, xs + ((r0 + hr) * F::kHaloW + mt * 16 + a_pix + kx) * F::kPitch + ch + a_ch);
#pragma unroll
              for (int i = 0; i < ROWS; ++i) {
                const int ky = hr - i;
                if (ky >= 0 && ky <= 2)
                  mma_16816<T>(acc[i][mt], a, bf[ky * 3 + kx][0], bf[ky * 3 + kx][1]);
              }
            }
      }
    }
    __syncthreads();
  }

  if constexpr (KS > 1) {
    // The stages are free now (the loop ended on a barrier): splits 1.. leave their
    // sums there, [slot][value][lane], and split 0 adds them in order.
    constexpr int kValues = ROWS * 2 * 4;
    float* red = reinterpret_cast<float*>(smem);
    const int slot0 = warp / KS * (KS - 1);
    if (split > 0) {
      float* r = red + (slot0 + split - 1) * kValues * 32 + lane;
#pragma unroll
      for (int i = 0; i < ROWS; ++i)
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int j = 0; j < 4; ++j) r[((i * 2 + mt) * 4 + j) * 32] = acc[i][mt][j];
    }
    __syncthreads();
    if (split > 0) return;
    for (int k = 1; k < KS; ++k) {
      const float* r = red + (slot0 + k - 1) * kValues * 32 + lane;
#pragma unroll
      for (int i = 0; i < ROWS; ++i)
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][mt][j] += r[((i * 2 + mt) * 4 + j) * 32];
    }
  }

  const T* bias = static_cast<const T*>(p.bias);
  const T* residual = static_cast<const T*>(p.residual);
  T* y = static_cast<T*>(p.y);
#pragma unroll
  for (int i = 0; i < ROWS; ++i) {
    const int oy = y0 + r0 + i;
    if (oy >= p.h) continue;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h8 = 0; h8 < 2; ++h8) {  // accumulators 0-1: pixel g; 2-3: pixel g + 8
        const int ox = x0 + mt * 16 + g + h8 * 8;
        if (ox >= p.w) continue;
        const int64_t at = ((int64_t(b) * p.h + oy) * p.w + ox) * O;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int o = 2 * t + j;
          if (o >= O) continue;
          float v = acc[i][mt][h8 * 2 + j];
          if (bias) v += to_float(bias[o]);
          if (residual) v += to_float(residual[at + o]);
          y[at + o] = from_float<T>(v);
        }
      }
  }
#endif
}

// Blocks of 16 rows (forms 1 and 4) take 107 KB of shared memory, more than sm_86 and
// sm_89 GPUs (A10, L4, RTX 30 and 40 series) allow a block (99 KB): there the call
// runs in form 3's blocks of two rows (59 KB) instead.
template <class T, int O, int WARPS, int ROWS, int KS>
void launch_few_out_mma(const NarrowParams& p, int n) {
  using F = FewOutMma<WARPS, ROWS, KS>;
  const size_t smem = F::smem(sizeof(T));
  if constexpr (!(WARPS == 4 && ROWS == 1 && KS == 2)) {
    if (smem > shared_memory_limit()) return launch_few_out_mma<T, O, 4, 1, 2>(p, n);
  }
  static const bool opted = [&] {
    CUDA_CHECK(cudaFuncSetAttribute(conv3x3_few_out_mma<T, O, WARPS, ROWS, KS>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    return true;
  }();
  (void)opted;
  const dim3 grid(unsigned((p.w + 31) / 32), unsigned((p.h + F::kRows - 1) / F::kRows),
                  unsigned(n));
  conv3x3_few_out_mma<T, O, WARPS, ROWS, KS><<<grid, WARPS * 32, smem, stream()>>>(p);
  CUDA_CHECK_LAUNCH();
}

template <class T, int O>
void few_out_mma(const NarrowParams& p, int n, int form) {
  if (form == 1) {
    launch_few_out_mma<T, O, 4, 4, 1>(p, n);
  } else if (form == 2) {
    launch_few_out_mma<T, O, 4, 2, 2>(p, n);
  } else if (form == 4) {
    launch_few_out_mma<T, O, 8, 2, 1>(p, n);
  } else {
    launch_few_out_mma<T, O, 4, 1, 2>(p, n);
  }
}

}  // namespace narrow_detail

template <class T>
void conv_few_out(const NarrowParams& p, int n, int form) {
  if constexpr (!std::is_same_v<T, float>) {
    if (form > 0) {
      switch (p.o) {
        case 3:
          return narrow_detail::few_out_mma<T, 3>(p, n, form);
        case 4:
          return narrow_detail::few_out_mma<T, 4>(p, n, form);
        default:
          return narrow_detail::few_out_mma<T, 8>(p, n, form);
      }
    }
  }
  switch (p.o) {
    case 3:
      return narrow_detail::few_out<T, 3>(p, n);
    case 4:
      return narrow_detail::few_out<T, 4>(p, n);
    default:
      return narrow_detail::few_out<T, 8>(p, n);
  }
}

}  // namespace kiln::cuda
