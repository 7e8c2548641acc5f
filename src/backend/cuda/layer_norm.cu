// LayerNorm over the last dimension: statistics in f32, a warp a row, in a fixed order
// (a replayed graph reproduces the eager pass bit for bit), normalisation in f32.
#include <atomic>
#include <type_traits>

#include "backend/cuda/device.cuh"
#include "backend/cuda/ops.h"

namespace kiln::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // one warp per row

// The row read once into registers (K packs of N per lane), two reductions
// from there, one write. gamma and beta are loaded with the row, before the
// reductions, so that their latency is not paid after them. With `res`, the row is
// x + res rounded to T, as ops::add makes it, and also written to `sum`.
template <class T, int N, int K, bool RES>
__global__ void layer_norm_kernel(const T* x, const T* res, const T* gamma, const T* beta, T* sum,
                                  T* out, int64_t rows, int channels, float eps) {
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
      Pack<T, N> p = *reinterpret_cast<const Pack<T, N>*>(xr + c);
      if constexpr (RES) {
        const Pack<T, N> r = *reinterpret_cast<const Pack<T, N>*>(res + row * channels + c);
#pragma unroll
        for (int j = 0; j < N; ++j) p.v[j] = from_float<T>(to_float(p.v[j]) + to_float(r.v[j]));
        *reinterpret_cast<Pack<T, N>*>(sum + row * channels + c) = p;
      }
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

// launch(std::integral_constant<int, K>{}) for the fewest packs a lane, K of 1, 2, 4, 6
// or 8, that hold per_lane (at most 8).
template <class F>
void with_packs_per_lane(int per_lane, F&& launch) {
  if (per_lane <= 1)
    launch(std::integral_constant<int, 1>{});
  else if (per_lane <= 2)
    launch(std::integral_constant<int, 2>{});
  else if (per_lane <= 4)
    launch(std::integral_constant<int, 4>{});
  else if (per_lane <= 6)
    launch(std::integral_constant<int, 6>{});
  else
    launch(std::integral_constant<int, 8>{});
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
      layer_norm_kernel<T, decltype(n)::value, decltype(k)::value, false>
          <<<grid, block, 0, stream()>>>(x, nullptr, gamma, beta, nullptr, out, rows, channels,
                                         a.eps);
    };
    using Vec = std::integral_constant<int, kVec<T>>;
    if (width == 1 || per_lane > 8)
      (width == 1 ? layer_norm_wide_kernel<T, 1>
                  : layer_norm_wide_kernel<T, kVec<T>>)<<<grid, block, 0, stream()>>>(
          x, gamma, beta, out, rows, channels, a.eps);
    else
      with_packs_per_lane(per_lane, [&](auto k) { launch(Vec{}, k); });
    CUDA_CHECK_LAUNCH();
  });
}

namespace {
std::atomic<size_t> g_add_layer_norm_calls{0};
}  // namespace

size_t add_layer_norm_calls() {
  return g_add_layer_norm_calls.load();
}

bool add_layer_norm(const AddLayerNormArgs& a) {
  const int64_t rows = a.x.dim(0);
  const int channels = int(a.x.dim(1));
  if (a.x.dtype() == DType::F32) return false;  // ops::add_layer_norm checked the rest
  bool done = false;
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a.x.raw());
    const T* res = static_cast<const T*>(a.residual.raw());
    const T* gamma = static_cast<const T*>(a.gamma.raw());
    const T* beta = static_cast<const T*>(a.beta.raw());
    T* sum = static_cast<T*>(a.sum.raw());
    T* out = static_cast<T*>(a.out.raw());
    const int width = pack_width<T>(channels, {x, res, gamma, beta, sum, out});
    const int per_lane = (channels + 32 * width - 1) / (32 * width);
    // Rows held in registers with 16-byte packs only; the rest takes the two ops.
    if (width != kVec<T> || per_lane > 8) return;
    done = true;
    ++g_add_layer_norm_calls;
    if (rows == 0 || channels == 0) return;
    const dim3 block{32, kRowsPerBlock};
    const unsigned grid = unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock);
    auto launch = [&](auto k) {
      layer_norm_kernel<T, kVec<T>, decltype(k)::value, true>
          <<<grid, block, 0, stream()>>>(x, res, gamma, beta, sum, out, rows, channels, a.eps);
    };
    with_packs_per_lane(per_lane, launch);
    CUDA_CHECK_LAUNCH();
  });
  return done;
}

}  // namespace kiln::cuda
