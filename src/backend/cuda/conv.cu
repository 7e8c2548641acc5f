// 2-D convolution on NHWC activations and OHWI weights.
//
// Paths, in order of preference:
//  - 1×1, stride 1, no padding: a GEMM over the pixels (bias and residual fused).
//  - cuDNN, where the build has it and the library loads: symmetric padding, the
//    algorithm found by timing once per shape (the plan, also kept in the plan
//    cache for later processes), then one pass for bias and residual. The plan
//    also times our narrow kernels (3×3 with few input or output channels) and, for
//    small images, im2col and a GEMM, and keeps whichever path is fastest.
//  - Without cuDNN, a narrow kernel where one applies.
//  - im2col into a bounded column buffer, then a cuBLASLt GEMM with the bias and
//    residual fused; bands of output rows keep the buffer under 256 MiB.
#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "backend/cuda/device.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/plan_cache.h"

namespace kiln::cuda {
namespace {

struct Im2colParams {
  const void* x;
  void* col;
  int64_t row_begin, rows;  // output pixels (b, oy, ox) flattened
  int h, w, c, ho, wo, kh, kw, stride, pad_top, pad_left;
};

// col[r, (ky * kw + kx) * c + ch] = x[b, oy * stride - pad_top + ky, ox * stride - pad_left + kx,
// ch]
template <class T, int N>
__global__ void im2col_kernel(Im2colParams p) {
  const T* x = static_cast<const T*>(p.x);
  Pack<T, N>* col = static_cast<Pack<T, N>*>(p.col);
  const int cp = p.c / N;
  const int64_t patch = int64_t(p.kh) * p.kw * cp, total = p.rows * patch;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / patch;
    const int rem = int(i - r * patch);
    const int tap = rem / cp, ch = rem - tap * cp;
    const int64_t pixel = p.row_begin + r;
    const int ox = int(pixel % p.wo);
    const int64_t t = pixel / p.wo;
    const int oy = int(t % p.ho);
    const int64_t b = t / p.ho;
    const int iy = oy * p.stride - p.pad_top + tap / p.kw;
    const int ix = ox * p.stride - p.pad_left + tap % p.kw;
    Pack<T, N> v;
    if (iy >= 0 && iy < p.h && ix >= 0 && ix < p.w) {
      v = reinterpret_cast<const Pack<T, N>*>(x + ((b * p.h + iy) * p.w + ix) * p.c)[ch];
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) v.v[j] = from_float<T>(0.0f);
    }
    col[i] = v;
  }
}

// The multiply-adds of a convolution (twice), for bench's TFLOP/s.
double conv_flops(const Conv2dArgs& a) {
  return 2.0 * double(a.out.numel()) * double(a.weight.numel() / a.weight.dim(0));
}

// Counts the model's FLOPs where this convolution computes another form of its own
// (Conv2dArgs::model_flops), less `counted` that a GEMM counted already (im2col's).
void count_conv_flops(const Conv2dArgs& a, double counted = 0.0) {
  count_flops((a.model_flops > 0.0 ? a.model_flops : conv_flops(a)) - counted);
}

constexpr size_t kColumnBudget = size_t(256) << 20;

void conv_im2col(const Conv2dArgs& a) {
  const int64_t batch = a.x.dim(0);
  const int h = int(a.x.dim(1)), w = int(a.x.dim(2)), c = int(a.x.dim(3));
  const int o = int(a.weight.dim(0)), kh = int(a.weight.dim(1)), kw = int(a.weight.dim(2));
  const int ho = int(a.out.dim(1)), wo = int(a.out.dim(2));
  const int64_t rows = batch * ho * wo, patch = int64_t(kh) * kw * c;
  const size_t elem = dtype_size(a.x.dtype());
  const int64_t band =
      std::clamp<int64_t>(int64_t(kColumnBudget / (size_t(patch) * elem)), 1, rows);
  const auto col = scratch(size_t(band * patch) * elem);
  const bool has_bias = a.bias.defined(), has_residual = a.residual.defined();
  for (int64_t r0 = 0; r0 < rows; r0 += band) {
    const int64_t n = std::min(band, rows - r0);
    Im2colParams p{a.x.raw(), col->data(), r0, n,  h,        w,         c,
                   ho,        wo,          kh, kw, a.stride, a.pad_top, a.pad_left};
    dispatch_float(a.x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const bool vec = c % kVec<T> == 0 && aligned16(p.x) && aligned16(p.col);
      if (vec) {
        im2col_kernel<T, kVec<T>><<<grid_for(n * patch / kVec<T>, 256), 256, 0, stream()>>>(p);
      } else {
        im2col_kernel<T, 1><<<grid_for(n * patch, 256), 256, 0, stream()>>>(p);
      }
      CUDA_CHECK_LAUNCH();
    });
    GemmParams g;
    g.m = n;
    g.n = o;
    g.k = patch;
    g.a = col->data();
    g.lda = patch;
    g.b = a.weight.raw();
    g.ldb = patch;
    g.c = static_cast<char*>(a.out.raw()) + size_t(r0 * o) * elem;
    g.ldc = o;
    g.bias = has_bias ? a.bias.raw() : nullptr;
    g.residual =
        has_residual ? static_cast<const char*>(a.residual.raw()) + size_t(r0 * o) * elem : nullptr;
    g.dtype = a.x.dtype();
    gemm_nt(g);
  }
  // The GEMMs counted this convolution's own FLOPs.
  if (a.model_flops > 0.0) count_conv_flops(a, conv_flops(a));
}

// ---------------------------------------------------------------------------
// Narrow 3×3 convolutions (stride 1, padding 1 all round): few output channels (a
// UNet's or decoder's conv_out: 320 → 4, 128 → 3) or few input channels (conv_in:
// 4 → 320). cuDNN tiles the narrow side to tens of channels and ran these at 1–13
// TFLOP/s on an H200 (SD1.5's conv_out 133 µs, SDXL's conv_in 81 µs); direct kernels
// on the CUDA cores, f32 accumulation, are bound by the input's bytes and their FMAs.

struct NarrowParams {
  const void* x;
  const void* weight;    // OHWI
  const void* bias;      // [O] or null
  const void* residual;  // like y, or null
  void* y;
  int h, w, c, o;
};

// Few outputs (O of them, all made by each thread): a block makes a tile of 32 output
// pixels by WARPS·ROWS rows, ROWS a thread, over the input channels in chunks of 32
// staged in shared memory with a one-pixel halo. A staged pixel is its chunk plus 16
// bytes, so that the 16-byte reads of a warp's consecutive pixels fall in distinct banks.
constexpr int kNarrowChunk = 32;

// Elements of the staged input tile (a 16-byte multiple: the weights follow it).
template <class T, int WARPS, int ROWS>
__host__ __device__ constexpr size_t few_out_staged_elems() {
  return size_t(WARPS * ROWS + 2) * 34 * (kNarrowChunk + kVec<T>);
}

template <class T, int O, int WARPS, int ROWS>
size_t few_out_smem() {
  return few_out_staged_elems<T, WARPS, ROWS>() * sizeof(T) + size_t(O) * 9 * kNarrowChunk * 4;
}

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
  for (int c0 = 0; c0 < p.c; c0 += kNarrowChunk) {
    __syncthreads();
    for (int i = threadIdx.x; i < (kTileH + 2) * kHaloW * kVecs; i += WARPS * 32) {
      const int pix = i / kVecs, v = i - pix * kVecs;
      const int gy = y0 - 1 + pix / kHaloW, gx = x0 - 1 + pix % kHaloW;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (gy >= 0 && gy < p.h && gx >= 0 && gx < p.w)
        val = *reinterpret_cast<const uint4*>(x + ((int64_t(b) * p.h + gy) * p.w + gx) * p.c + c0 +
                                              v * V);
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
      for (int v = 0; v < kVecs; ++v) {
        float xf[ROWS][V];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(
              xs + ((ty + WARPS * r + ky) * kHaloW + tx + kx) * kStride + v * V);
#pragma unroll
          for (int e = 0; e < V; ++e) xf[r][e] = to_float(pk.v[e]);
        }
#pragma unroll
        for (int o = 0; o < O; ++o) {
          const float* wv = ws + (o * 9 + tap) * kNarrowChunk + v * V;
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
  load(0);
  for (int s = 0; s < count; ++s) {
    if (s + 1 < count) {
      load(s + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
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

// Few inputs (C of them): a block makes 64 consecutive output pixels of one image row
// for every output channel, a thread one channel at a time with its 9·C weights in
// registers; the three input rows it needs are staged in shared memory as f32.
constexpr int kFewInPixels = 64;

template <class T, int C>
__global__ void __launch_bounds__(512) conv3x3_few_in(NarrowParams p) {
  __shared__ float xs[3][kFewInPixels + 2][C];
  const int row = blockIdx.y, b = row / p.h, oy = row - b * p.h;
  const int x0 = blockIdx.x * kFewInPixels;
  const T* x = static_cast<const T*>(p.x);
  for (int i = threadIdx.x; i < 3 * (kFewInPixels + 2) * C; i += blockDim.x) {
    const int ky = i / ((kFewInPixels + 2) * C), rem = i - ky * (kFewInPixels + 2) * C;
    const int px = rem / C, ch = rem - px * C;
    const int gy = oy - 1 + ky, gx = x0 - 1 + px;
    xs[ky][px][ch] = gy >= 0 && gy < p.h && gx >= 0 && gx < p.w
                         ? to_float(x[((int64_t(b) * p.h + gy) * p.w + gx) * C + ch])
                         : 0.0f;
  }
  __syncthreads();
  const T* w = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  const T* residual = static_cast<const T*>(p.residual);
  T* y = static_cast<T*>(p.y);
  const int pixels = min(kFewInPixels, p.w - x0);
  for (int o = threadIdx.x; o < p.o; o += blockDim.x) {
    float wr[9][C];
#pragma unroll
    for (int tap = 0; tap < 9; ++tap)
#pragma unroll
      for (int ch = 0; ch < C; ++ch) wr[tap][ch] = to_float(w[(int64_t(o) * 9 + tap) * C + ch]);
    const float b0 = bias ? to_float(bias[o]) : 0.0f;
    const int64_t base = (int64_t(b) * p.h + oy) * p.w + x0;
    for (int px = 0; px < pixels; ++px) {
      float v = 0.0f;
#pragma unroll
      for (int tap = 0; tap < 9; ++tap)
#pragma unroll
        for (int ch = 0; ch < C; ++ch) v = fmaf(xs[tap / 3][px + tap % 3][ch], wr[tap][ch], v);
      v += b0;
      const int64_t at = (base + px) * p.o + o;
      if (residual) v += to_float(residual[at]);
      y[at] = from_float<T>(v);
    }
  }
}

bool is_3x3_same(const Conv2dArgs& a) {
  return a.weight.dim(1) == 3 && a.weight.dim(2) == 3 && a.stride == 1 && a.pad_top == 1 &&
         a.pad_left == 1 && a.pad_bottom == 1 && a.pad_right == 1;
}

bool few_out_applies(const Conv2dArgs& a) {
  const int64_t o = a.weight.dim(0), c = a.x.dim(3);
  return is_3x3_same(a) && (o == 3 || o == 4 || o == 8) && c % kNarrowChunk == 0 &&
         aligned16(a.x.raw());
}

// The tensor-core form of the few-output kernel: f16/bf16 on sm_80 and later, 16-byte
// aligned weights (cp.async copies them 16 bytes at a time).
bool few_out_mma_applies(const Conv2dArgs& a) {
  return few_out_applies(a) && a.x.dtype() != DType::F32 && aligned16(a.weight.raw()) &&
         context().props.major >= 8;
}

bool few_in_applies(const Conv2dArgs& a) {
  const int64_t o = a.weight.dim(0), c = a.x.dim(3);
  return is_3x3_same(a) && (c == 3 || c == 4 || c == 8) && o >= 32 && o <= 4096;
}

// Whether a narrow kernel takes this convolution.
bool narrow_applies(const Conv2dArgs& a) {
  return few_out_applies(a) || few_in_applies(a);
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
  // images (SD1.5's 64×64 latents) take four warps of one row, for more blocks.
  const int64_t big_blocks = int64_t((p.w + 31) / 32) * ((p.h + 15) / 16) * n;
  if (big_blocks >= 2 * int64_t(context().props.multiProcessorCount))
    launch_few_out<T, O, 8, 2>(p, n);
  else
    launch_few_out<T, O, 4, 1>(p, n);
}

template <class T, int O, int WARPS, int ROWS, int KS>
void launch_few_out_mma(const NarrowParams& p, int n) {
  using F = FewOutMma<WARPS, ROWS, KS>;
  const size_t smem = F::smem(sizeof(T));
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

// Narrow forms (Options::narrow_conv_form): 0 the CUDA-core kernels; 1-4 the
// tensor-core few-output kernel: 1-3 four warps with 16, 4 or 2 output rows a block
// (the shorter tiles split each stage's channels between two warps, for more blocks on
// small images), 4 eight warps of two rows (16 a block: more warps to hide latency, a
// little less reuse of each staged row than four rows a warp).
constexpr int kNarrowForms = 5;

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

// The narrow form for `a` where none was timed: the tensor-core kernel where it
// applies, with the tallest tile that still makes a block for every multiprocessor.
int default_narrow_form(const Conv2dArgs& a) {
  if (!few_out_mma_applies(a)) return 0;
  const int64_t columns = (a.x.dim(2) + 31) / 32, sms = context().props.multiProcessorCount;
  for (auto [form, rows] : {std::pair{1, 16}, std::pair{2, 4}})
    if (columns * ((a.x.dim(1) + rows - 1) / rows) * a.x.dim(0) >= sms) return form;
  return 3;
}

// The forms worth timing for `a` (the forced one alone where the options force one).
std::vector<int> narrow_forms(const Conv2dArgs& a) {
  if (options().narrow_conv_form >= 0) return {options().narrow_conv_form};
  if (!few_out_mma_applies(a)) return {0};
  return {0, 1, 2, 3, 4};
}

std::atomic<size_t> narrow_calls{0}, narrow_mma_calls{0};

// y = conv(x) + bias (+ residual) with a narrow kernel; narrow_applies(a) must hold.
// `form` 1-3 takes the tensor-core kernel where it applies (else the CUDA cores').
void conv_narrow(const Conv2dArgs& a, int form) {
  narrow_calls.fetch_add(1, std::memory_order_relaxed);
  NarrowParams p{a.x.raw(),
                 a.weight.raw(),
                 a.bias.defined() ? a.bias.raw() : nullptr,
                 a.residual.defined() ? a.residual.raw() : nullptr,
                 a.out.raw(),
                 int(a.x.dim(1)),
                 int(a.x.dim(2)),
                 int(a.x.dim(3)),
                 int(a.weight.dim(0))};
  const int n = int(a.x.dim(0));
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>) {  // few_out_mma_applies excludes f32
      if (form > 0 && few_out_mma_applies(a)) {
        narrow_mma_calls.fetch_add(1, std::memory_order_relaxed);
        switch (p.o) {
          case 3:
            return few_out_mma<T, 3>(p, n, form);
          case 4:
            return few_out_mma<T, 4>(p, n, form);
          default:
            return few_out_mma<T, 8>(p, n, form);
        }
      }
    }
    if (few_out_applies(a)) {
      switch (p.o) {
        case 3:
          return few_out<T, 3>(p, n);
        case 4:
          return few_out<T, 4>(p, n);
        default:
          return few_out<T, 8>(p, n);
      }
    }
    const dim3 grid(unsigned((p.w + kFewInPixels - 1) / kFewInPixels), unsigned(n * p.h));
    const int threads = std::min(512, (p.o + 31) / 32 * 32);
    switch (p.c) {
      case 3:
        conv3x3_few_in<T, 3><<<grid, threads, 0, stream()>>>(p);
        break;
      case 4:
        conv3x3_few_in<T, 4><<<grid, threads, 0, stream()>>>(p);
        break;
      default:
        conv3x3_few_in<T, 8><<<grid, threads, 0, stream()>>>(p);
        break;
    }
    CUDA_CHECK_LAUNCH();
  });
}

#if defined(KILN_WITH_CUDNN)
cudnnDataType_t cudnn_type(DType t) {
  switch (t) {
    case DType::F32:
      return CUDNN_DATA_FLOAT;
    case DType::F16:
      return CUDNN_DATA_HALF;
    case DType::BF16:
      return CUDNN_DATA_BFLOAT16;
    default:
      KILN_FAIL("cuDNN convolution on ", dtype_name(t));
  }
}

struct ConvKey {
  int64_t n, h, w, c, o, kh, kw, stride, pad_h, pad_w;
  DType dtype;
  bool cudnn_only;  // Options::ConvKernel::Cudnn: the other paths are not timed
  int narrow_form;  // Options::narrow_conv_form: -1, or the one narrow form timed
  bool step_timed;  // Options::PlanTiming::Step
  auto tie() const {
    return std::tie(n, h, w, c, o, kh, kw, stride, pad_h, pad_w, dtype, cudnn_only, narrow_form,
                    step_timed);
  }
  bool operator<(const ConvKey& k) const { return tie() < k.tie(); }
  // Every field, for the plan cache.
  std::string name() const {
    return str("n", n, " h", h, " w", w, " c", c, " o", o, " k", kh, "x", kw, " stride", stride,
               " pad", pad_h, ",", pad_w, " ", dtype_name(dtype), cudnn_only ? " cudnn-only" : "",
               narrow_form >= 0 ? str(" narrow-form", narrow_form) : "",
               step_timed ? " step-timed" : "");
  }
};

// What a plan runs: cuDNN's convolution, a narrow kernel of ours, or im2col and a GEMM.
// The plan cache stores the last two as plans::kConvNarrowAlgo and kConvIm2colAlgo,
// algorithm numbers cuDNN's enumeration does not use (a narrow plan's form, 0-3, in
// its math type).
enum class ConvPath { Cudnn, Narrow, Im2col };

struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnActivationDescriptor_t identity = nullptr;
  cudnnConvolutionFwdAlgo_t algo{};
  size_t workspace = 0;
  bool valid = false;
  bool fused = false;  // bias and residual inside cuDNN's call
  ConvPath path = ConvPath::Cudnn;
  int narrow_form = 0;  // with ConvPath::Narrow
};

// y = conv(x) + bias (+ z): cuDNN's fused call, which takes the identity
// activation only with the implicit-precomputed-GEMM algorithm.
cudnnStatus_t conv_bias_residual(const ConvPlan& plan, const Conv2dArgs& a, void* ws) {
  const float alpha1 = 1.0f, alpha2 = a.residual.defined() ? 1.0f : 0.0f;
  const void* z = a.residual.defined() ? a.residual.raw() : a.out.raw();
  return cudnnConvolutionBiasActivationForward(context().cudnn, &alpha1, plan.x, a.x.raw(), plan.w,
                                               a.weight.raw(), plan.conv, plan.algo, ws,
                                               plan.workspace, &alpha2, plan.y, z, plan.bias,
                                               a.bias.raw(), plan.identity, plan.y, a.out.raw());
}

std::mutex g_conv_mu;
std::map<ConvKey, ConvPlan> g_conv_plans;

// A workspace bigger than this is not worth its memory (Options::conv_workspace_mib).
size_t conv_workspace_limit() {
  return size_t(options().conv_workspace_mib) << 20;
}

// Makes the descriptors of `k`; false when cuDNN's output size differs from
// the one asked for.
bool describe(ConvPlan& plan, const ConvKey& k, const Conv2dArgs& a) {
  const cudnnDataType_t type = cudnn_type(k.dtype);
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan.x));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan.y));
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&plan.w));
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&plan.conv));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan.x, CUDNN_TENSOR_NHWC, type, int(k.n), int(k.c),
                                         int(k.h), int(k.w)));
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(plan.w, type, CUDNN_TENSOR_NHWC, int(k.o), int(k.c),
                                         int(k.kh), int(k.kw)));
  CUDNN_CHECK(cudnnSetConvolution2dDescriptor(plan.conv, int(k.pad_h), int(k.pad_w), int(k.stride),
                                              int(k.stride), 1, 1, CUDNN_CROSS_CORRELATION,
                                              CUDNN_DATA_FLOAT));
  // f32 stays f32 (no TF32), as on the CPU.
  CUDNN_CHECK(cudnnSetConvolutionMathType(
      plan.conv, k.dtype == DType::F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
  int n = 0, c = 0, ho = 0, wo = 0;
  CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(plan.conv, plan.x, plan.w, &n, &c, &ho, &wo));
  if (ho != a.out.dim(1) || wo != a.out.dim(2)) return false;
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan.y, CUDNN_TENSOR_NHWC, type, n, c, ho, wo));
  return true;
}

// `plan` with bias and residual inside the convolution, run with `algo`: kept
// only if cuDNN accepts the call (which computes this call's output). On
// failure `plan`'s math type is left as it was.
std::optional<ConvPlan> try_fused(const ConvPlan& plan, const ConvKey& k, const Conv2dArgs& a,
                                  cudnnConvolutionFwdAlgo_t algo, cudnnMathType_t math,
                                  size_t workspace) {
  ConvPlan fused = plan;
  fused.algo = algo;
  fused.workspace = workspace;
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&fused.bias));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(fused.bias, CUDNN_TENSOR_NHWC, cudnn_type(k.dtype), 1,
                                         int(k.o), 1, 1));
  CUDNN_CHECK(cudnnCreateActivationDescriptor(&fused.identity));
  CUDNN_CHECK(cudnnSetActivationDescriptor(fused.identity, CUDNN_ACTIVATION_IDENTITY,
                                           CUDNN_NOT_PROPAGATE_NAN, 0.0));
  // The descriptors are shared with `plan`: its math type is restored below.
  cudnnMathType_t previous{};
  CUDNN_CHECK(cudnnGetConvolutionMathType(plan.conv, &previous));
  CUDNN_CHECK(cudnnSetConvolutionMathType(fused.conv, math));
  const auto ws = workspace ? scratch(workspace) : nullptr;
  if (conv_bias_residual(fused, a, ws ? ws->data() : nullptr) == CUDNN_STATUS_SUCCESS) {
    fused.valid = fused.fused = true;
    return fused;
  }
  (void)cudaGetLastError();
  CUDNN_CHECK(cudnnDestroyTensorDescriptor(fused.bias));
  CUDNN_CHECK(cudnnDestroyActivationDescriptor(fused.identity));
  CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, previous));
  return std::nullopt;
}

// A stored choice applied to `plan`'s descriptors; nullopt when it no longer
// holds (its fused call is refused, or its workspace is over today's limit), so
// that the shape is timed again.
std::optional<ConvPlan> plan_from_store(ConvPlan plan, const ConvKey& k, const Conv2dArgs& a,
                                        const plans::ConvChoice& stored) {
  if (!stored.valid) return plan;
  if (stored.algo == plans::kConvNarrowAlgo || stored.algo == plans::kConvIm2colAlgo) {
    if (stored.algo == plans::kConvNarrowAlgo) {
      const int form = stored.math_type;
      if (!narrow_applies(a) || form < 0 || form >= kNarrowForms ||
          (form > 0 && !few_out_mma_applies(a)))
        return std::nullopt;
      plan.narrow_form = form;
    }
    plan.path = stored.algo == plans::kConvNarrowAlgo ? ConvPath::Narrow : ConvPath::Im2col;
    plan.valid = true;
    return plan;
  }
  if (stored.workspace > conv_workspace_limit()) return std::nullopt;
  const auto algo = cudnnConvolutionFwdAlgo_t(stored.algo);
  const auto math = cudnnMathType_t(stored.math_type);
  // As when it was timed: the fused variant holds only once a call with a bias
  // has been accepted.
  if (stored.fused && a.bias.defined()) return try_fused(plan, k, a, algo, math, stored.workspace);
  CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, math));
  // cuDNN still takes this algorithm for these descriptors, in that workspace.
  size_t need = 0;
  if (cudnnGetConvolutionForwardWorkspaceSize(context().cudnn, plan.x, plan.w, plan.conv, plan.y,
                                              algo, &need) != CUDNN_STATUS_SUCCESS ||
      need > stored.workspace)
    return std::nullopt;
  plan.algo = algo;
  plan.workspace = stored.workspace;
  plan.valid = true;
  return plan;
}

// Runs `plan` on `a`: y = conv(x) + bias (+ residual).
void run_plan(const ConvPlan& plan, const Conv2dArgs& a) {
  if (plan.path == ConvPath::Narrow) return conv_narrow(a, plan.narrow_form);
  if (plan.path == ConvPath::Im2col) return conv_im2col(a);
  Context& ctx = context();
  const auto ws = plan.workspace ? scratch(plan.workspace) : nullptr;
  if (plan.fused && a.bias.defined()) {
    CUDNN_CHECK(conv_bias_residual(plan, a, ws ? ws->data() : nullptr));
    return;
  }
  const float alpha = 1.0f, beta = 0.0f;
  CUDNN_CHECK(cudnnConvolutionForward(ctx.cudnn, &alpha, plan.x, a.x.raw(), plan.w, a.weight.raw(),
                                      plan.conv, plan.algo, ws ? ws->data() : nullptr,
                                      plan.workspace, &beta, plan.y, a.out.raw()));
  const int64_t rows = a.out.numel() / a.out.dim(3);
  bias_act_residual(a.out.raw(), a.bias.defined() ? a.bias.raw() : nullptr,
                    a.residual.defined() ? a.residual.raw() : nullptr, rows, a.out.dim(3),
                    Activation::None, a.x.dtype());
}

// Milliseconds a call of `plan` takes: three runs after one untimed (which, for
// im2col, also times its GEMM's plan), warm or as in a step as `timer` does.
float time_plan(const ConvPlan& plan, const Conv2dArgs& a, PlanTimer& timer) {
  run_plan(plan, a);
  return timer.time([&] { run_plan(plan, a); }, a.x.raw(), a.x.nbytes(), 3);
}

// Convolutions with at most this many output pixels also time im2col and a cuBLASLt
// GEMM: with so few rows cuDNN's kernels leave most of the GPU idle (SD1.5's 8×8
// level: 26 µs a call at 143 TFLOP/s), where cuBLASLt's heuristic splits K. Measured
// on an H200 (bench/results/2026-12-03-h200-v12): at 128 pixels im2col won inside the
// model as it did alone (eleven 2x8x8x1280 calls 0.30 → 0.24 ms); at 512 and 2048 it
// won alone but lost inside the model (SDXL's ten 2x32x32x1280 0.95 → 1.10 ms), its
// column buffer no longer in L2 there.
constexpr int64_t kIm2colTimedPixels = 256;

// cuDNN's plan against our paths where they apply, on the real operands: the fastest
// is kept (in the plan cache too, through `keep`).
template <class Keep>
ConvPlan fastest_path(ConvPlan plan, const ConvKey& k, const Conv2dArgs& a, const Keep& keep,
                      plans::ConvChoice cudnn_choice) {
  if (k.cudnn_only) {
    keep(cudnn_choice);
    return plan;
  }
  PlanTimer timer(k.step_timed);
  float best_ms = time_plan(plan, a, timer);
  ConvPlan best = plan;
  auto time_other = [&](ConvPath path, int form) {
    ConvPlan other = plan;
    other.path = path;
    other.narrow_form = form;
    const float ms = time_plan(other, a, timer);
    if (ms < best_ms) {
      best_ms = ms;
      best = other;
    }
  };
  if (narrow_applies(a))
    for (int form : narrow_forms(a)) time_other(ConvPath::Narrow, form);
  if (a.out.numel() / k.o <= kIm2colTimedPixels && k.kh * k.kw > 1) time_other(ConvPath::Im2col, 0);
  if (best.path == ConvPath::Cudnn) {
    keep(cudnn_choice);
    return plan;
  }
  if (best.path == ConvPath::Narrow)
    keep({true, plans::kConvNarrowAlgo, best.narrow_form, 0, false});
  else
    keep({true, plans::kConvIm2colAlgo, 0, 0, false});
  return best;
}

ConvPlan make_conv_plan(const ConvKey& k, const Conv2dArgs& a) {
  Context& ctx = context();
  ConvPlan plan;
  if (!describe(plan, k, a)) return plan;
  const std::string name = k.name();
  if (const auto stored = stored_conv_plan(name)) {
    if (auto from_store = plan_from_store(plan, k, a, *stored)) {
      count_reused_plan();
      return *from_store;
    }
  }

  // Time the algorithms once on the real operands (the output is about to be
  // overwritten anyway) and keep the fastest that needs a workspace we accept.
  size_t free_bytes = 0, total = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
  const size_t limit = std::min(conv_workspace_limit(), free_bytes / 4);
  // A search that free memory or a cap below the default constrained is used now but
  // not kept on disk: a later process with the memory to spare times the shape again.
  auto keep = [&](const plans::ConvChoice& choice) {
    if (limit == conv_workspace_limit() &&
        options().conv_workspace_mib == Options{}.conv_workspace_mib && k.narrow_form < 0)
      record_conv_plan(name, choice);
  };
  // Straight from the driver and back, so that the search's workspace does not
  // linger in the cache.
  void* ws = nullptr;
  CUDA_CHECK(cudaMalloc(&ws, limit));
  constexpr int kAlgos = 8;
  cudnnConvolutionFwdAlgoPerf_t perf[kAlgos];
  int returned = 0;
  const cudnnStatus_t found = cudnnFindConvolutionForwardAlgorithmEx(
      ctx.cudnn, plan.x, a.x.raw(), plan.w, a.weight.raw(), plan.conv, plan.y, a.out.raw(), kAlgos,
      &returned, perf, ws, limit);
  CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  CUDA_CHECK(cudaFree(ws));
  CUDNN_CHECK(found);
  // The fastest deterministic algorithm (results come sorted by time), so that a
  // replayed graph reproduces the eager pass; any algorithm if none is.
  int chosen = -1;
  for (bool deterministic : {true, false}) {
    for (int i = 0; i < returned && chosen < 0; ++i)
      if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= limit &&
          (!deterministic || perf[i].determinism == CUDNN_DETERMINISTIC))
        chosen = i;
    if (chosen >= 0) break;
  }
  if (chosen < 0) {
    keep({});
    return plan;
  }
  // Within 3% of that time, the one with the smallest workspace: a few percent of one
  // convolution is not worth hundreds of MiB at the peak (the workspace comes from the
  // caching allocator and is live while the convolution runs).
  const float fastest = perf[chosen].time;
  for (int i = 0; i < returned; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory < perf[chosen].memory &&
        perf[i].time <= 1.03f * fastest && perf[i].determinism == perf[chosen].determinism)
      chosen = i;
  plan.algo = perf[chosen].algo;
  plan.workspace = perf[chosen].memory;
  CUDNN_CHECK(cudnnSetConvolutionMathType(plan.conv, perf[chosen].mathType));
  plan.valid = true;

  // Bias and residual inside the convolution save a pass over the output, worth
  // a slightly slower algorithm; kept only if cuDNN accepts the call.
  for (int i = 0; i < returned; ++i) {
    if (perf[i].algo != CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
        perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > limit ||
        perf[i].time > 1.15f * perf[chosen].time || !a.bias.defined())
      continue;
    if (auto fused = try_fused(plan, k, a, perf[i].algo, perf[i].mathType, perf[i].memory))
      return fastest_path(*fused, k, a, keep,
                          {true, int(perf[i].algo), int(perf[i].mathType), perf[i].memory, true});
  }
  return fastest_path(
      plan, k, a, keep,
      {true, int(perf[chosen].algo), int(perf[chosen].mathType), perf[chosen].memory, false});
}

// False when cuDNN cannot take this convolution (the caller uses im2col).
bool conv_cudnn(const Conv2dArgs& a) {
  Context& ctx = context();
  if (!ctx.cudnn || !options().use_cudnn) return false;
  if (a.pad_top != a.pad_bottom || a.pad_left != a.pad_right) return false;
  const ConvKey key{a.x.dim(0),
                    a.x.dim(1),
                    a.x.dim(2),
                    a.x.dim(3),
                    a.weight.dim(0),
                    a.weight.dim(1),
                    a.weight.dim(2),
                    a.stride,
                    a.pad_top,
                    a.pad_left,
                    a.x.dtype(),
                    options().conv_kernel == Options::ConvKernel::Cudnn,
                    options().narrow_conv_form,
                    options().plan_timing == Options::PlanTiming::Step};
  const ConvPlan* plan = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_conv_mu);
    auto it = g_conv_plans.find(key);
    if (it == g_conv_plans.end()) {
      if (ctx.capturing) return false;  // cannot time inside a capture
      it = g_conv_plans.emplace(key, make_conv_plan(key, a)).first;
    }
    plan = &it->second;
  }
  if (!plan->valid) return false;
  run_plan(*plan, a);
  // im2col's GEMM counts its own FLOPs.
  if (plan->path != ConvPath::Im2col) count_conv_flops(a);
  return true;
}
#endif

}  // namespace

size_t narrow_conv_calls() {
  return narrow_calls.load(std::memory_order_relaxed);
}
size_t narrow_conv_mma_calls() {
  return narrow_mma_calls.load(std::memory_order_relaxed);
}

void forget_conv_plans() {
#if defined(KILN_WITH_CUDNN)
  std::lock_guard<std::mutex> lock(g_conv_mu);
  for (auto& [key, plan] : g_conv_plans) {
    CUDNN_CHECK(cudnnDestroyTensorDescriptor(plan.x));
    CUDNN_CHECK(cudnnDestroyTensorDescriptor(plan.y));
    CUDNN_CHECK(cudnnDestroyFilterDescriptor(plan.w));
    CUDNN_CHECK(cudnnDestroyConvolutionDescriptor(plan.conv));
    if (plan.bias) CUDNN_CHECK(cudnnDestroyTensorDescriptor(plan.bias));
    if (plan.identity) CUDNN_CHECK(cudnnDestroyActivationDescriptor(plan.identity));
  }
  g_conv_plans.clear();
#endif
}

void conv2d(const Conv2dArgs& a) {
  if (a.out.numel() == 0) return;
  const int64_t kh = a.weight.dim(1), kw = a.weight.dim(2), c = a.x.dim(3), o = a.weight.dim(0);
  const bool pointwise = kh == 1 && kw == 1 && a.stride == 1 && a.pad_top == 0 && a.pad_left == 0 &&
                         a.pad_bottom == 0 && a.pad_right == 0;
  if (pointwise) {
    GemmParams g;
    g.m = a.x.numel() / c;
    g.n = o;
    g.k = c;
    g.a = a.x.raw();
    g.lda = c;
    g.b = a.weight.raw();
    g.ldb = c;
    g.c = a.out.raw();
    g.ldc = o;
    g.bias = a.bias.defined() ? a.bias.raw() : nullptr;
    g.residual = a.residual.defined() ? a.residual.raw() : nullptr;
    g.dtype = a.x.dtype();
    gemm_nt(g);
    return;
  }
  const bool narrow = narrow_applies(a);
  // Without a timed plan: the forced narrow form, or the one for this image's size.
  auto untimed_form = [&] {
    return options().narrow_conv_form >= 0 ? options().narrow_conv_form : default_narrow_form(a);
  };
  if (narrow && options().conv_kernel == Options::ConvKernel::Narrow) {
    count_conv_flops(a);
    conv_narrow(a, untimed_form());
    return;
  }
#if defined(KILN_WITH_CUDNN)
  if (conv_cudnn(a)) return;  // FLOPs counted there
#endif
  // Without cuDNN (or while a graph is captured before the shape's plan was made) a
  // narrow kernel where one applies, else im2col.
  if (narrow && options().conv_kernel != Options::ConvKernel::Cudnn && options().use_cudnn) {
    count_conv_flops(a);
    conv_narrow(a, untimed_form());
    return;
  }
  conv_im2col(a);
}

}  // namespace kiln::cuda
