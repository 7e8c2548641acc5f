// 3×3 convolutions over images of at most 128 pixels (SD1.5's 8×8 level at batch 2:
// 2x8x8x1280 -> 1280, eleven a step, and 2x8x8x2560 -> 1280, three), split along the
// input channels over eight blocks. Their GEMM is 128 rows by 1280
// columns by 11520 (or 23040) deep: cuDNN and im2col + cuBLASLt reach 150-180 TF/s
// there (about 19 µs a call on an H100 for 29.5 MB of weights, which DRAM streams in
// about 9), because 128 rows make ten 128×128 output tiles for 132 multiprocessors.
//
// Here a block makes 80 output channels of every pixel from one eighth of the input
// channels (all nine taps): its slice of x, at most 128 × 320 values, is staged once in
// shared memory, and its weights stream through shared memory a tap at a time, two or
// three stages deep, into warp-level MMAs (eight warps of 16 pixel rows × 80 channels,
// or with Options::conv_split_k_rows 32 of 32 rows × 40 channels). Each block stores
// its partial sums (f32) in a workspace; the last of a column tile's eight blocks to
// finish (a counter in Context::counters, left at zero) adds the eight in split order
// (the same bits every run), then the bias and the residual, and stores the outputs.
// 16 column tiles × 8 = 128 blocks, one wave of one block a multiprocessor.
//
// The first form met its partials in the distributed shared memory of a cluster of
// eight blocks, and took 37-44 µs a call on an H100 against 23-25 for the path the plan
// picks (bench/results/2026-12-07-v34): clusters of eight are placed within a GPC, and
// fewer than 16 of them at one block a multiprocessor may fit at once, which makes
// two waves. The workspace costs 40 KB a block through L2 and needs no co-residency.
//
// Opt-in (Options::conv_split_k): timed among the convolution paths with 1, forced
// where it applies with 2 (tests, A/B runs).
#include <atomic>
#include <type_traits>

#include "backend/cuda/context.h"
#include "backend/cuda/conv_narrow.cuh"
#include "backend/cuda/device.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/ops.h"

namespace kiln::cuda {
namespace {

constexpr int kSplits = 8;       // blocks a column tile, one slice of channels each
constexpr int kTileO = 80;       // output channels a block
constexpr int kMaxPixels = 128;  // rows: eight warps of 16, or four pairs of 32
constexpr int kThreads = 256;

// Shared memory of a block with CK channels and `stages` weight stages: the x slice
// (a zero row after the pixels, where padding and absent rows read), then the stages.
template <int CK>
constexpr size_t split_k_smem(int stages) {
  const size_t pitch = size_t(CK + 8) * 2;  // bytes a row; (CK + 8) / 8 odd: no ldmatrix conflicts
  return (kMaxPixels + 1) * pitch + stages * size_t(kTileO) * pitch;
}

template <class T, int CK, int STAGES, int WR>
__global__ void __launch_bounds__(kThreads)
    conv3x3_split_k(NarrowParams p, int pixels, float* partials, unsigned* counters) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // the launcher takes this kernel only on sm_90 and later
#else
  static_assert(CK % 16 == 0, "channels a block in steps of 16");
  static_assert(WR == 16 || WR == 32, "a warp's rows: 16 or 32");
  constexpr int kPitch = CK + 8;   // elements a shared row
  constexpr int kChunks = CK / 8;  // 16-byte chunks a row
  constexpr int kSteps = CK / 16;
  // The block's 128 × 80 outputs over eight warps: WR rows by kWarpCols columns each.
  constexpr int kRowGroups = kMaxPixels / WR;
  constexpr int kColGroups = kThreads / 32 / kRowGroups;
  constexpr int kWarpCols = kTileO / kColGroups;
  constexpr int kTilesN = kWarpCols / 8;  // 10 or 5 MMA columns
  constexpr int kHalves = WR / 16;        // MMA rows
  extern __shared__ __align__(16) unsigned char smem[];
  T* xs = reinterpret_cast<T*>(smem);               // [kMaxPixels + 1][kPitch]
  T* ws = xs + (kMaxPixels + 1) * kPitch;  // [STAGES][kTileO][kPitch]

  const int rank = blockIdx.y;  // the slice of channels
  const int o0 = blockIdx.x * kTileO, c0 = rank * CK;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int row0 = (warp / kColGroups) * WR, col0 = (warp % kColGroups) * kWarpCols;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);

  // x's slice: every pixel's CK channels from c0; the zero row after them.
  for (int i = tid; i < pixels * kChunks; i += kThreads) {
    const int m = i / kChunks, j = i - m * kChunks;
    cp_async_16(xs + m * kPitch + j * 8, x + int64_t(m) * p.c + c0 + j * 8, 16);
  }
  for (int j = tid; j < kPitch / 8; j += kThreads)
    *reinterpret_cast<uint4*>(xs + kMaxPixels * kPitch + j * 8) = make_uint4(0, 0, 0, 0);
  auto load_tap = [&](int tap) {
    T* dst = ws + (tap % STAGES) * kTileO * kPitch;
    for (int i = tid; i < kTileO * kChunks; i += kThreads) {
      const int o = i / kChunks, j = i - o * kChunks;
      cp_async_16(dst + o * kPitch + j * 8, w + (int64_t(o0 + o) * 9 + tap) * p.c + c0 + j * 8, 16);
    }
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    load_tap(s);
    cp_async_commit();  // the first group holds x's slice too
  }

  // This lane's pixel in each of its warp's ldmatrix of A: row row0 + h·16 + (lane & 15),
  // channels (lane >> 4) · 8 on from each step's 16.
  const int hw = p.h * p.w;
  int m[kHalves], img[kHalves], py[kHalves], px[kHalves];
#pragma unroll
  for (int h = 0; h < kHalves; ++h) {
    m[h] = row0 + h * 16 + (lane & 15);
    img[h] = m[h] / hw;
    const int within = m[h] - img[h] * hw;
    py[h] = within / p.w;
    px[h] = within - py[h] * p.w;
  }
  const int a_col = (lane >> 4) * 8;
  const int mat = lane >> 3, mat_row = lane & 7;  // for B: 16 columns × 16 channels a load
  const int b_row = mat_row + (mat >> 1) * 8, b_col = (mat & 1) * 8;
  // ldmatrix.x2 for an odd last 8 columns: lanes 0-15 give the addresses (the others
  // repeat them).
  const int b2_row = mat_row, b2_col = (mat & 1) * 8;

  float acc[kHalves][kTilesN][4];
#pragma unroll
  for (int h = 0; h < kHalves; ++h)
#pragma unroll
    for (int t = 0; t < kTilesN; ++t) acc[h][t][0] = acc[h][t][1] = acc[h][t][2] = acc[h][t][3] = 0.0f;

  // A warp whose rows are all past the image (batch 1: half the warps) only loads and
  // meets the barriers; the reduction never reads its rows.
  const bool has_rows = row0 < pixels;
  for (int tap = 0; tap < 9; ++tap) {
    if (tap + STAGES - 1 < 9) load_tap(tap + STAGES - 1);
    cp_async_commit();  // empty groups at the end keep the count
    cp_async_wait<STAGES - 1>();
    __syncthreads();
    if (!has_rows) {
      __syncthreads();
      continue;
    }
    const T* a_row[kHalves];
#pragma unroll
    for (int h = 0; h < kHalves; ++h) {
      const int sy = py[h] + tap / 3 - 1, sx = px[h] + tap % 3 - 1;
      const bool inside = m[h] < pixels && sy >= 0 && sy < p.h && sx >= 0 && sx < p.w;
      a_row[h] = xs + (inside ? (img[h] * hw + sy * p.w + sx) : kMaxPixels) * kPitch + a_col;
    }
    const T* stage = ws + (tap % STAGES) * kTileO * kPitch + col0 * kPitch;
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      uint32_t af[kHalves][4];
#pragma unroll
      for (int h = 0; h < kHalves; ++h) ldmatrix_x4(af[h], a_row[h] + k * 16);
#pragma unroll
      for (int np = 0; np < kTilesN / 2; ++np) {
        uint32_t bf[4];
        ldmatrix_x4(bf, stage + (np * 16 + b_row) * kPitch + k * 16 + b_col);
#pragma unroll
        for (int h = 0; h < kHalves; ++h) {
          mma_16816<T>(acc[h][2 * np], af[h], bf[0], bf[1]);
          mma_16816<T>(acc[h][2 * np + 1], af[h], bf[2], bf[3]);
        }
      }
      if constexpr (kTilesN % 2 == 1) {
        uint32_t bf[2];
        ldmatrix_x2(bf, stage + ((kTilesN - 1) * 8 + b2_row) * kPitch + k * 16 + b2_col);
#pragma unroll
        for (int h = 0; h < kHalves; ++h) mma_16816<T>(acc[h][kTilesN - 1], af[h], bf[0], bf[1]);
      }
    }
    __syncthreads();  // the stage is refilled next
  }
  cp_async_wait<0>();
  __syncthreads();

  // This block's partial sums into the workspace, [split][column tile][pixel][kTileO]:
  // thread (group g, quad q) holds rows g and g + 8 of each 16 of its warp's, columns
  // 2q and 2q + 1 of each 8.
  float* mine = partials + (int64_t(rank) * gridDim.x + blockIdx.x) * kMaxPixels * kTileO;
  if (has_rows) {
    const int g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int h = 0; h < kHalves; ++h) {
      const int r = row0 + h * 16 + g;
#pragma unroll
      for (int t = 0; t < kTilesN; ++t) {
        const int col = col0 + t * 8 + 2 * q;
        if (r < pixels)
          __stcg(reinterpret_cast<float2*>(mine + r * kTileO + col),
                 make_float2(acc[h][t][0], acc[h][t][1]));
        if (r + 8 < pixels)
          __stcg(reinterpret_cast<float2*>(mine + (r + 8) * kTileO + col),
                 make_float2(acc[h][t][2], acc[h][t][3]));
      }
    }
  }
  // The last of the column tile's blocks to get here adds the eight partials.
  __shared__ int last;
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(&counters[blockIdx.x], 1u) == unsigned(kSplits - 1) ? 1 : 0;
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (tid == 0) counters[blockIdx.x] = 0;

  // Four outputs a thread and step: the eight partials in split order, the bias, the
  // residual.
  const T* bias = static_cast<const T*>(p.bias);
  const T* residual = static_cast<const T*>(p.residual);
  T* y = static_cast<T*>(p.y);
  const int64_t split_stride = int64_t(gridDim.x) * kMaxPixels * kTileO;
  const float* tile = partials + int64_t(blockIdx.x) * kMaxPixels * kTileO;
  for (int i = tid; i < pixels * (kTileO / 4); i += kThreads) {
    const int r = i / (kTileO / 4), col = (i - r * (kTileO / 4)) * 4;
    float4 v[kSplits];
#pragma unroll
    for (int s = 0; s < kSplits; ++s)
      v[s] = __ldcg(reinterpret_cast<const float4*>(tile + s * split_stride + r * kTileO + col));
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int s = 0; s < kSplits; ++s) {
      sum[0] += v[s].x;
      sum[1] += v[s].y;
      sum[2] += v[s].z;
      sum[3] += v[s].w;
    }
    const int o = o0 + col;
    const int64_t at = int64_t(r) * p.o + o;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (bias) sum[j] += to_float(bias[o + j]);
      if (residual) sum[j] += to_float(residual[at + j]);
      y[at + j] = from_float<T>(sum[j]);
    }
  }
#endif
}

std::atomic<size_t> split_k_calls{0};

// Whether a block of this instantiation fits on a multiprocessor (asked once, after
// the shared-memory attribute is set).
template <class T, int CK, int STAGES, int WR>
bool fits() {
  static const bool ok = [] {
    auto* kernel = conv3x3_split_k<T, CK, STAGES, WR>;
    const size_t smem = split_k_smem<CK>(STAGES);
    if (smem > size_t(context().props.sharedMemPerBlockOptin)) return false;
    CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    int n = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, smem));
    return n > 0;
  }();
  return ok;
}

// Calls f(CK, STAGES, WR) for a's input channels (1280 or 2560) and the warp tile's
// rows (Options::conv_split_k_rows), as integral constants.
template <class F>
auto with_slice(int64_t channels, F&& f) {
  using std::integral_constant;
  const bool wide = options().conv_split_k_rows == 32;
  const auto with_rows = [&](auto ck, auto stages) {
    return wide ? f(ck, stages, integral_constant<int, 32>{})
                : f(ck, stages, integral_constant<int, 16>{});
  };
  return channels == 8 * 160 ? with_rows(integral_constant<int, 160>{}, integral_constant<int, 3>{})
                             : with_rows(integral_constant<int, 320>{}, integral_constant<int, 2>{});
}

template <class T, int CK, int STAGES, int WR>
void launch_split_k(const NarrowParams& p, int pixels, float* partials) {
  const int columns = p.o / kTileO;
  KILN_CHECK(columns <= Context::kCounters, "conv_split_k: ", columns, " column tiles");
  conv3x3_split_k<T, CK, STAGES, WR>
      <<<dim3(unsigned(columns), unsigned(kSplits)), kThreads, split_k_smem<CK>(STAGES), stream()>>>(
          p, pixels, partials, context().counters);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

bool split_k_conv_applies(const Conv2dArgs& a) {
  const int64_t c = a.x.dim(3), o = a.weight.dim(0);
  const int64_t pixels = a.x.dim(0) * a.x.dim(1) * a.x.dim(2);
  if (!(is_3x3_same(a) && a.x.dtype() != DType::F32 && pixels >= 1 && pixels <= kMaxPixels &&
        (c == 8 * 160 || c == 8 * 320) && o % kTileO == 0 && aligned16(a.x.raw()) &&
        aligned16(a.weight.raw()) && split_k_conv_available()))
    return false;
  // A block of this shared memory fits on a multiprocessor.
  bool ok = false;
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>)
      ok = with_slice(c, [](auto ck, auto stages, auto rows) {
        return fits<T, decltype(ck)::value, decltype(stages)::value, decltype(rows)::value>();
      });
  });
  return ok;
}

void conv_split_k(const Conv2dArgs& a) {
  KILN_CHECK(split_k_conv_applies(a), "conv_split_k: ", a.x.describe(), " with weight ",
             a.weight.describe(), " is not taken");
  const NarrowParams p = narrow_params(a);
  const int pixels = int(a.x.dim(0) * a.x.dim(1) * a.x.dim(2));
  // [split][column tile][pixel][kTileO] partial sums; rows past `pixels` are not written.
  const auto partials = scratch(size_t(kSplits) * p.o * kMaxPixels * sizeof(float));
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>)  // split_k_conv_applies excludes f32
      with_slice(p.c, [&](auto ck, auto stages, auto rows) {
        launch_split_k<T, decltype(ck)::value, decltype(stages)::value, decltype(rows)::value>(
            p, pixels, static_cast<float*>(partials->data()));
        return 0;
      });
  });
  split_k_calls.fetch_add(1, std::memory_order_relaxed);
}

bool split_k_conv_available() {
  // sm_90 (the build's kernels are sm_90a; later GPUs take other shared-memory sizes).
  return context().props.major == 9;
}

size_t split_k_conv_calls() {
  return split_k_calls.load(std::memory_order_relaxed);
}

}  // namespace kiln::cuda
