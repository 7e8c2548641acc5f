// LayerNorm over the last dimension: statistics in f32, a warp a row, in a fixed order
// (a replayed graph reproduces the eager pass bit for bit), normalisation in f32.
#include <type_traits>

#include "backend/cuda/device.cuh"
#include "backend/cuda/ops.h"

namespace kiln::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // warps a block; one row a warp (the packed form: 1, 2 or 4)

// The row read once into registers (K packs of N per lane), two reductions
// from there, one write. gamma and beta are loaded with the row, before the
// reductions, so that their latency is not paid after them.
template <class T, int N, int K>
__global__ void layer_norm_kernel(const T* x, const T* gamma, const T* beta, T* out, int64_t rows,
                                  int channels, float eps) {
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;
  const int lane = threadIdx.x;
  const T* xr = x + row * channels;
  float v[K][N];
  Pack<T, N> g[K], bt[K];
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = (k * 32 + lane) * N;
    if (c < channels) {
      const Pack<T, N> p = *reinterpret_cast<const Pack<T, N>*>(xr + c);
      g[k] = *reinterpret_cast<const Pack<T, N>*>(gamma + c);
      bt[k] = *reinterpret_cast<const Pack<T, N>*>(beta + c);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        v[k][j] = to_float(p.v[j]);
        s += v[k][j];
      }
    }
  }
  const float mean = warp_sum(s) / float(channels);
  float q = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if ((k * 32 + lane) * N < channels) {
#pragma unroll
      for (int j = 0; j < N; ++j) q += (v[k][j] - mean) * (v[k][j] - mean);
    }
  }
  const float rstd = 1.0f / sqrtf(warp_sum(q) / float(channels) + eps);
  T* orow = out + row * channels;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = (k * 32 + lane) * N;
    if (c < channels) {
      Pack<T, N> r;
#pragma unroll
      for (int j = 0; j < N; ++j)
        r.v[j] =
            from_float<T>((v[k][j] - mean) * rstd * to_float(g[k].v[j]) + to_float(bt[k].v[j]));
      *reinterpret_cast<Pack<T, N>*>(orow + c) = r;
    }
  }
}

// The same from packs kept as loaded (half the registers of floats in f16/bf16), with
// L lanes a row and 32 / L rows a warp: rows of 320 or 640 channels take 8 or 16 lanes,
// so that every lane holds K = 5 packs instead of one or two lanes in three idling (a
// warp a row: 320 channels are 40 packs over 32 lanes). Sums over a row's L lanes in a
// fixed order (xor shuffles inside aligned runs of L lanes).
template <int L>
__device__ __forceinline__ float lanes_sum(float v) {
#pragma unroll
  for (int o = L / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <class T, int N, int K, int L>
__global__ void layer_norm_packed_kernel(const T* x, const T* gamma, const T* beta, T* out,
                                         int64_t rows, int channels, float eps) {
  constexpr int kRowsPerWarp = 32 / L;
  const int64_t first = (int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.y) * kRowsPerWarp;
  if (first >= rows) return;  // the whole warp: its shuffles need every lane
  const int lane = threadIdx.x % L;
  const int64_t row = first + threadIdx.x / L;
  const bool live = row < rows;
  const T* xr = x + (live ? row : first) * channels;
  Pack<T, N> v[K], g[K], bt[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = (k * L + lane) * N;
    if (c < channels) {
      v[k] = *reinterpret_cast<const Pack<T, N>*>(xr + c);
      g[k] = *reinterpret_cast<const Pack<T, N>*>(gamma + c);
      bt[k] = *reinterpret_cast<const Pack<T, N>*>(beta + c);
    }
  }
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k)
    if ((k * L + lane) * N < channels) {
#pragma unroll
      for (int j = 0; j < N; ++j) s += to_float(v[k].v[j]);
    }
  const float mean = lanes_sum<L>(s) / float(channels);
  float q = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k)
    if ((k * L + lane) * N < channels) {
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const float d = to_float(v[k].v[j]) - mean;
        q += d * d;
      }
    }
  const float rstd = 1.0f / sqrtf(lanes_sum<L>(q) / float(channels) + eps);
  if (!live) return;
  T* orow = out + row * channels;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = (k * L + lane) * N;
    if (c < channels) {
      Pack<T, N> r;
#pragma unroll
      for (int j = 0; j < N; ++j)
        r.v[j] = from_float<T>((to_float(v[k].v[j]) - mean) * rstd * to_float(g[k].v[j]) +
                               to_float(bt[k].v[j]));
      *reinterpret_cast<Pack<T, N>*>(orow + c) = r;
    }
  }
}

// Rows too wide for registers: two passes over the row for mean and variance
// (the second from L1), a third to write.
template <class T, int N>
__global__ void layer_norm_wide_kernel(const T* x, const T* gamma, const T* beta, T* out,
                                       int64_t rows, int channels, float eps) {
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;
  const int lane = threadIdx.x;
  const T* xr = x + row * channels;
  float s = 0.0f;
  for (int c = lane * N; c < channels; c += 32 * N) {
    const Pack<T, N> p = *reinterpret_cast<const Pack<T, N>*>(xr + c);
#pragma unroll
    for (int j = 0; j < N; ++j) s += to_float(p.v[j]);
  }
  const float mean = warp_sum(s) / float(channels);
  float q = 0.0f;
  for (int c = lane * N; c < channels; c += 32 * N) {
    const Pack<T, N> p = *reinterpret_cast<const Pack<T, N>*>(xr + c);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float d = to_float(p.v[j]) - mean;
      q += d * d;
    }
  }
  const float rstd = 1.0f / sqrtf(warp_sum(q) / float(channels) + eps);
  T* orow = out + row * channels;
  for (int c = lane * N; c < channels; c += 32 * N) {
    const Pack<T, N> p = *reinterpret_cast<const Pack<T, N>*>(xr + c);
    const Pack<T, N> g = *reinterpret_cast<const Pack<T, N>*>(gamma + c);
    const Pack<T, N> bt = *reinterpret_cast<const Pack<T, N>*>(beta + c);
    Pack<T, N> r;
#pragma unroll
    for (int j = 0; j < N; ++j)
      r.v[j] =
          from_float<T>((to_float(p.v[j]) - mean) * rstd * to_float(g.v[j]) + to_float(bt.v[j]));
    *reinterpret_cast<Pack<T, N>*>(orow + c) = r;
  }
}

}  // namespace

void layer_norm(const LayerNormArgs& a) {
  const int64_t rows = a.x.dim(0);
  const int channels = int(a.x.dim(1));
  if (rows == 0 || channels == 0) return;
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a.x.raw());
    const T* gamma = static_cast<const T*>(a.gamma.raw());
    const T* beta = static_cast<const T*>(a.beta.raw());
    T* out = static_cast<T*>(a.out.raw());
    const dim3 block{32, kRowsPerBlock};
    const unsigned grid = unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock);
    const int width = pack_width<T>(channels, {x, gamma, beta, out});
    const int per_lane = (channels + 32 * width - 1) / (32 * width);  // packs per lane
    auto launch = [&](auto n, auto k) {
      layer_norm_kernel<T, decltype(n)::value, decltype(k)::value>
          <<<grid, block, 0, stream()>>>(x, gamma, beta, out, rows, channels, a.eps);
    };
    using One = std::integral_constant<int, 1>;
    using Vec = std::integral_constant<int, kVec<T>>;
    const int packs = channels / width;
    if (options().layer_norm_packed && width > 1 && packs <= 8 * 32) {
      // The fewest lanes a row (8, 16 or 32) that hold it in at most 6 packs a lane
      // (8 where 32 lanes need 7 or 8).
      int lanes = 8;
      while (lanes < 32 && packs > 6 * lanes) lanes *= 2;
      const int k = (packs + lanes - 1) / lanes;
      const unsigned warps = unsigned((rows + 32 / lanes - 1) / (32 / lanes));
      const unsigned blocks = (warps + kRowsPerBlock - 1) / kRowsPerBlock;
      auto packed = [&](auto l) {
        constexpr int Lanes = decltype(l)::value;
        auto go = [&](auto kk) {
          constexpr int Packs = decltype(kk)::value;
          // Only what the rule above can pick: 8 lanes take 1 to 6 packs, 16 take 4 to 6
          // (more than 48 a row), 32 take 4 to 8 (more than 96).
          if constexpr ((Lanes == 8 && Packs <= 6) ||
                        (Lanes > 8 && Packs >= 4 && (Lanes == 32 || Packs <= 6)))
            layer_norm_packed_kernel<T, kVec<T>, Packs, Lanes>
                <<<blocks, block, 0, stream()>>>(x, gamma, beta, out, rows, channels, a.eps);
          else
            KILN_CHECK(false, "layer_norm: no packed kernel of ", Lanes, " lanes and ", Packs,
                       " packs a lane");
        };
        if (k <= 1)
          go(One{});
        else if (k <= 2)
          go(std::integral_constant<int, 2>{});
        else if (k <= 3)
          go(std::integral_constant<int, 3>{});
        else if (k <= 4)
          go(std::integral_constant<int, 4>{});
        else if (k <= 5)
          go(std::integral_constant<int, 5>{});
        else if (k <= 6)
          go(std::integral_constant<int, 6>{});
        else
          go(std::integral_constant<int, 8>{});
      };
      if (lanes == 8)
        packed(std::integral_constant<int, 8>{});
      else if (lanes == 16)
        packed(std::integral_constant<int, 16>{});
      else
        packed(std::integral_constant<int, 32>{});
    } else if (width == 1 || per_lane > 8)
      (width == 1 ? layer_norm_wide_kernel<T, 1>
                  : layer_norm_wide_kernel<T, kVec<T>>)<<<grid, block, 0, stream()>>>(
          x, gamma, beta, out, rows, channels, a.eps);
    else if (per_lane <= 1)
      launch(Vec{}, One{});
    else if (per_lane <= 2)
      launch(Vec{}, std::integral_constant<int, 2>{});
    else if (per_lane <= 4)
      launch(Vec{}, std::integral_constant<int, 4>{});
    else if (per_lane <= 6)
      launch(Vec{}, std::integral_constant<int, 6>{});
    else
      launch(Vec{}, std::integral_constant<int, 8>{});
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace kiln::cuda
