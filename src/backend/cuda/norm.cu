// GroupNorm (with its activation fused; LayerNorm is in layer_norm.cu). Statistics in
// f32 per block, combined across blocks in f64, normalisation in f32. Every reduction
// runs in a fixed order, so results are the same run after run (a replayed
// graph reproduces the eager pass bit for bit).
//
// Tensors of about 1 to 4 MB take one launch over thread block clusters on Hopper
// (group_norm_cluster). Otherwise groups small enough for one block's registers take
// one launch and one pass (group_norm_resident). Larger ones, on NHWC, read whole rows
// of C channels (coalesced) and sort the per-channel sums into groups, in two
// launches: partial sums per (batch, block of rows, group), where the last block of
// each batch row folds them (one warp per group, in a fixed order) with gamma and beta
// into a per-channel scale and shift; then out = act(x * scale + shift) in a flat
// grid-stride loop. group_norm_grid, one launch over the whole GPU, runs only when
// asked for (it measured slower; see there).
#include <cooperative_groups.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <numeric>
#include <type_traits>
#include <utility>

#include "backend/cuda/device.cuh"
#include "backend/cuda/fast_div.h"
#include "backend/cuda/ops.h"

namespace kiln::cuda {
namespace {

// Where the statistics kernel reads its rows from. PlainRows: x [B, rows, C], plus the
// addend's row b where there is one. PhaseRows: the four output phases of an upsampling
// convolution, [B, H + 1, W + 1, 4·C] (ops::upsample2x_conv), read in the order of the
// interleaved tensor [B, 2H, 2W, C], which it also writes (interleave_phases): that
// tensor's statistics come with its copy instead of from a pass of their own.
template <class T, int N>
struct PlainRows {
  static constexpr bool kStores = false;
  const T* x;
  const T* addend;  // the first channel of batch row 0, or null
  int64_t addend_stride, rows;
  int channels;
  // The addend of pack v's channels in batch row b, or zeros.
  __device__ void prepare(int b, int v, float (&add)[N]) const {
#pragma unroll
    for (int j = 0; j < N; ++j)
      add[j] = addend ? to_float(addend[int64_t(b) * addend_stride + v * N + j]) : 0.0f;
  }
  __device__ Pack<T, N> load(int b, int64_t row, int v, const float (&add)[N]) const {
    Pack<T, N> p =
        *reinterpret_cast<const Pack<T, N>*>(x + (int64_t(b) * rows + row) * channels + v * N);
    // x + addend rounded to T, what the separate add stored (and the apply reads).
    if (addend) {
#pragma unroll
      for (int j = 0; j < N; ++j) p.v[j] = from_float<T>(to_float(p.v[j]) + add[j]);
    }
    return p;
  }
  __device__ void store(int, int64_t, int, const Pack<T, N>&) const {}
};

template <class T, int N>
struct PhaseRows {
  static constexpr bool kStores = true;
  const T* z;
  T* out;
  FastDiv out_w;   // 2W: row = y · 2W + x
  int64_t hz, wz;  // H + 1, W + 1
  int64_t rows;    // 4HW
  int channels;    // C
  __device__ void prepare(int, int, float (&add)[N]) const {
#pragma unroll
    for (int j = 0; j < N; ++j) add[j] = 0.0f;
  }
  // out[b, 2i + r, 2j + c] = z[b, i + r, j + c, (2r + c)·C ..]
  __device__ Pack<T, N> load(int b, int64_t row, int v, const float (&)[N]) const {
    uint32_t y, x;
    out_w.divmod(uint32_t(row), y, x);
    const uint32_t r = y & 1, c = x & 1;
    const int64_t zy = (y >> 1) + r, zx = (x >> 1) + c;
    return *reinterpret_cast<const Pack<T, N>*>(
        z + ((int64_t(b) * hz + zy) * wz + zx) * 4 * channels + (2 * r + c) * channels + v * N);
  }
  __device__ void store(int b, int64_t row, int v, const Pack<T, N>& p) const {
    *reinterpret_cast<Pack<T, N>*>(out + (int64_t(b) * rows + row) * channels + v * N) = p;
  }
};

// The statistics kernel's per-channel totals in shared memory: C floats and one padding
// float after every 32.
__host__ __device__ inline int norm_stats_channel_floats(int channels) {
  return channels + channels / 32 + 1;
}

// Block (X, Y) of up to 512 threads: X across the row's packs of N channels, Y rows at a
// time, U rows' loads in flight a thread before any arithmetic. Shared memory: [N][Y][X]
// sums and squares, whose Y rows meet in a tree (all threads, log2 Y steps, a fixed
// order), then per-channel totals [C] of each (one padding word after every 32), summed
// into groups at the end. Both arrays keep a warp's accesses in distinct banks: laid
// out [Y][X][N], a warp's stores of channel j fell into 32 / N banks (8-way conflicts in
// f16), and the group sums' lanes, per_group channels apart, into as few (`spread` off:
// that layout, the same sums in the same order, for A/B runs). The last
// block of a batch row to finish (counted in `counters`, left at zero again) folds the
// partial sums, in a fixed order, into per-channel scale and shift:
// out = act(x * scale + shift). Each of its lanes loads its first channel's gamma and
// beta before the fold, so that their latency is not paid after it.
template <class T, int N, int U, class Rows>
__global__ void __launch_bounds__(512)
    group_norm_stats(Rows src, float* partial, const T* gamma, const T* beta, float* scale,
                     float* shift, unsigned* counters, int64_t rows, int64_t rows_per_block,
                     int channels, int groups, float eps, bool spread) {
  extern __shared__ float smem[];
  const int X = blockDim.x, Y = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * X + tx, threads = X * Y;
  // Thread t's channel j at t · ts + j · js; channel c at c + (c >> cs).
  const int ts = spread ? 1 : N, js = spread ? threads : 1, cs = spread ? 5 : 31;
  const int chan_len = norm_stats_channel_floats(channels);
  float* stage_s = smem;                   // [N][Y][X]
  float* stage_q = stage_s + threads * N;  // [N][Y][X]
  float* chan_s = stage_q + threads * N;   // [C + C / 32]
  float* chan_q = chan_s + chan_len;       // [C + C / 32]
  // In the dynamic buffer too: with any static shared memory a launch of exactly
  // 48 KiB dynamic would need the opt-in the launcher only sets above 48 KiB.
  int& last = *reinterpret_cast<int*>(chan_q + chan_len);

  // The apply after it (launched as a dependent where options().group_norm_pdl) may
  // take its place on the multiprocessors now; it waits for this grid's end before it
  // reads the scale and shift.
  allow_dependents();
  const int b = blockIdx.y, splits = gridDim.x;
  const int64_t r0 = int64_t(blockIdx.x) * rows_per_block;
  const int64_t r1 = min(rows, r0 + rows_per_block);
  const int packs = channels / N;
  int top = 1;  // the smallest power of two >= Y
  while (top < Y) top *= 2;
  for (int v0 = 0; v0 < packs; v0 += X) {
    const int v = v0 + tx;
    float s[N] = {}, q[N] = {};
    if (v < packs) {
      float add[N];
      src.prepare(b, v, add);
      for (int64_t r = r0 + ty; r < r1; r += U * Y) {
        Pack<T, N> p[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t row = r + int64_t(u) * Y;
          if (row < r1) {
            p[u] = src.load(b, row, v, add);
          } else {
#pragma unroll
            for (int j = 0; j < N; ++j) p[u].v[j] = from_float<T>(0.0f);
          }
        }
        if constexpr (Rows::kStores) {
#pragma unroll
          for (int u = 0; u < U; ++u)
            if (r + int64_t(u) * Y < r1) src.store(b, r + int64_t(u) * Y, v, p[u]);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
#pragma unroll
          for (int j = 0; j < N; ++j) {
            const float f = to_float(p[u].v[j]);
            s[j] += f;
            q[j] += f * f;
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      stage_s[tid * ts + j * js] = s[j];
      stage_q[tid * ts + j * js] = q[j];
    }
    __syncthreads();
    // Row ty takes row ty + h's sums, halving the rows each step, in a fixed order.
    for (int h = top / 2; h > 0; h /= 2) {
      if (ty < h && ty + h < Y) {
        const int o = (tid + h * X) * ts;
#pragma unroll
        for (int j = 0; j < N; ++j) {
          s[j] += stage_s[o + j * js];
          q[j] += stage_q[o + j * js];
          stage_s[tid * ts + j * js] = s[j];
          stage_q[tid * ts + j * js] = q[j];
        }
      }
      __syncthreads();
    }
    if (ty == 0 && v < packs) {
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const int c = v * N + j;
        chan_s[c + (c >> cs)] = s[j];
        chan_q[c + (c >> cs)] = q[j];
      }
    }
    __syncthreads();
  }
  const int per_group = channels / groups;
  float* out = partial + (int64_t(b) * splits + blockIdx.x) * groups * 2;
  for (int g = tid; g < groups; g += threads) {
    float gs = 0.0f, gq = 0.0f;
    for (int c = g * per_group; c < (g + 1) * per_group; ++c) {
      gs += chan_s[c + (c >> cs)];
      gq += chan_q[c + (c >> cs)];
    }
    out[2 * g] = gs;
    out[2 * g + 1] = gq;
  }

  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(&counters[b], 1u) == unsigned(splits - 1) ? 1 : 0;
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (tid == 0) counters[b] = 0;
  // Whole warps only (the block need not be a multiple of 32; it has at least 128).
  // L lanes per group, as many groups at once as the warps hold: a chain of L2
  // round trips per group is what this step's time is made of.
  const int warps = threads / 32;
  if (tid >= warps * 32) return;
  int lanes = 32;
  while (lanes > 1 && (warps * 32 / lanes) < groups) lanes /= 2;
  const int lane = tid % lanes, concurrent = warps * 32 / lanes;
  const double count = double(rows) * per_group;
  for (int g0 = 0; g0 < groups; g0 += concurrent) {
    const int g = g0 + tid / lanes;
    const bool active = g < groups;
    // This lane's first channel's gamma and beta, loaded before the fold.
    const int c_first = g * per_group + lane;
    const bool has_first = active && lane < per_group;
    const float gm_first = has_first ? to_float(gamma[c_first]) : 0.0f;
    const float bt_first = has_first ? to_float(beta[c_first]) : 0.0f;
    double gs = 0.0, gq = 0.0;
    if (active) {
      const float* p = partial + int64_t(b) * splits * groups * 2 + 2 * g;
      // Sixteen loads in flight a lane: the fold is a chain of L2 round trips.
      constexpr int kFold = 16;
      for (int i0 = lane; i0 < splits; i0 += kFold * lanes) {
        float2 v[kFold];
#pragma unroll
        for (int u = 0; u < kFold; ++u) {
          const int i = i0 + u * lanes;
          v[u] = i < splits ? __ldcg(reinterpret_cast<const float2*>(p + int64_t(i) * groups * 2))
                            : make_float2(0.0f, 0.0f);
        }
#pragma unroll
        for (int u = 0; u < kFold; ++u) {
          gs += v[u].x;
          gq += v[u].y;
        }
      }
    }
    // Within each group's lanes (aligned runs of `lanes` in the warp), in a fixed order.
    for (int o = lanes / 2; o > 0; o >>= 1) {
      gs += __shfl_xor_sync(0xffffffffu, gs, o);
      gq += __shfl_xor_sync(0xffffffffu, gq, o);
    }
    if (!active) continue;
    const double mean = gs / count;
    const double var = fmax(gq / count - mean * mean, 0.0);
    const double rstd = 1.0 / sqrt(var + double(eps));
    for (int c = c_first; c < (g + 1) * per_group; c += lanes) {
      const double gm = double(c == c_first ? gm_first : to_float(gamma[c]));
      const double bt = double(c == c_first ? bt_first : to_float(beta[c]));
      scale[int64_t(b) * channels + c] = float(rstd * gm);
      shift[int64_t(b) * channels + c] = float(bt - mean * rstd * gm);
    }
  }
}

// out = act(x * scale + shift) in a grid-stride loop over the whole tensor, U
// accesses of N channels a thread and step, all U loads issued before any
// arithmetic. One access a step kept a single 16-byte load in flight per thread: 45%
// of DRAM bandwidth under ncu on the 1024² VAE decode's 1x1048576x128 (240 us against
// 128 for a copy). A thread keeps the scale and shift (2N floats, from L1) of the
// (batch row, pack) it last applied and loads them again only for another: where the
// launcher makes the stride a whole number of rows (`reuse`), that is once a batch row
// instead of once an access (ncu, v28: L1 at 63% where DRAM was at 35%, each 16-byte
// pack loading 64 bytes of scale and shift). Launched as a dependent of the statistics
// kernel, it waits for that kernel's end before it reads the scale and shift, and
// before its first loads of x too unless `x_ready` (x is not what the statistics
// kernel writes: its first loads then overlap the statistics' last block).
template <class T, int N, int U>
__global__ void group_norm_apply(const T* x, const T* addend, int64_t addend_stride, T* out,
                                 const float* scale, const float* shift, uint32_t packs,
                                 FastDiv batch_packs, FastDiv row_packs, Activation act, bool reuse,
                                 bool x_ready) {
  const int64_t channels = int64_t(row_packs.divisor()) * N;
  const uint32_t stride = gridDim.x * blockDim.x;
  uint32_t held = UINT32_MAX;  // b · packs a row + pack of the scale and shift in sc, sh
  float sc[N], sh[N];
  bool waited = !x_ready;
  if (waited) wait_for_prior();
  for (uint32_t i0 = blockIdx.x * blockDim.x + threadIdx.x; i0 < packs; i0 += U * stride) {
    Pack<T, N> v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint32_t i = i0 + u * stride;
      if (i < packs) v[u] = *reinterpret_cast<const Pack<T, N>*>(x + int64_t(i) * N);
    }
    if (!waited) {
      wait_for_prior();
      waited = true;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint32_t i = i0 + u * stride;
      if (i >= packs) break;
      uint32_t b, within, row, cp;
      batch_packs.divmod(i, b, within);
      row_packs.divmod(within, row, cp);
      const int64_t c = int64_t(b) * channels + int64_t(cp) * N;
      const T* add = addend ? addend + int64_t(b) * addend_stride + int64_t(cp) * N : nullptr;
      const uint32_t key = b * row_packs.divisor() + cp;
      if (!reuse || key != held) {
        held = key;
        load_scale_shift(scale, shift, c, sc, sh);
      }
      // With an addend, what is normalised is x + addend rounded to T (as in the stats).
      if (add) {
#pragma unroll
        for (int j = 0; j < N; ++j)
          v[u].v[j] = from_float<T>(to_float(v[u].v[j]) + to_float(__ldg(add + j)));
      }
      *reinterpret_cast<Pack<T, N>*>(out + int64_t(i) * N) = apply_scale_shift(v[u], sc, sh, act);
    }
  }
}

// Groups that 1024 threads can hold in registers (up to 48 values a thread in
// f16/bf16, 24 in f32, at most 24 accesses; 49152 values a group at most): one
// block per (batch, group) reads its group once, takes the mean and then the
// centred variance from the registers, and writes.
// One launch and one pass over memory; accesses of W channels where the group's
// width and the addresses allow. (The form before read the group three times
// and split indices with 64-bit divisions: 10-38 us a call on SD1.5's shapes.)
constexpr int kResidentThreads = 1024;
// Accesses of W values a thread holds: 24 registers of values, which leaves the
// rest of the 64 a 1024-thread block allows without spilling.
template <class T, int W>
constexpr int kResident = std::min(24, (sizeof(T) == 4 ? 24 : 48) / W);

template <class T, int W>
__global__ void __launch_bounds__(kResidentThreads)
    group_norm_resident(const T* x, const T* addend, int64_t addend_stride, const T* gamma,
                        const T* beta, T* out, int64_t rows, int channels, int groups,
                        FastDiv group_packs, float eps, Activation act) {
  constexpr int K = kResident<T, W>;
  __shared__ float red[32];
  const int b = blockIdx.x / groups, g = blockIdx.x % groups;
  const uint32_t packs = group_packs.divisor();  // accesses per row of the group
  const uint32_t n = uint32_t(rows) * packs;
  const int64_t base = int64_t(b) * rows * channels + int64_t(g) * packs * W;
  auto offset = [&](uint32_t i, uint32_t& j) {
    uint32_t r;
    group_packs.divmod(i, r, j);
    return base + int64_t(r) * channels + int64_t(j) * W;
  };
  Pack<T, W> v[K];
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const uint32_t i = k * blockDim.x + threadIdx.x;
    if (i < n) {
      uint32_t jp;
      v[k] = *reinterpret_cast<const Pack<T, W>*>(x + offset(i, jp));
      if (addend) {  // x + addend rounded to T, what the separate add stored
        const T* a = addend + int64_t(b) * addend_stride + (g * int(packs) + int(jp)) * W;
#pragma unroll
        for (int j = 0; j < W; ++j) v[k].v[j] = from_float<T>(to_float(v[k].v[j]) + to_float(a[j]));
      }
#pragma unroll
      for (int j = 0; j < W; ++j) s += to_float(v[k].v[j]);
    }
  }
  const float count = float(n) * W;
  const float mean = block_reduce(s, red, false) / count;
  float q = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (k * blockDim.x + threadIdx.x < n) {
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const float d = to_float(v[k].v[j]) - mean;
        q += d * d;
      }
    }
  }
  const float rstd = 1.0f / sqrtf(block_reduce(q, red, false) / count + eps);
  const int c0 = g * int(packs) * W;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const uint32_t i = k * blockDim.x + threadIdx.x;
    if (i >= n) continue;
    uint32_t r, jp;
    group_packs.divmod(i, r, jp);
    const int c = c0 + int(jp) * W;
    Pack<T, W> o;
#pragma unroll
    for (int j = 0; j < W; ++j)
      o.v[j] = from_float<T>(activate_narrow<T>(
          act,
          (to_float(v[k].v[j]) - mean) * rstd * to_float(gamma[c + j]) + to_float(beta[c + j])));
    *reinterpret_cast<Pack<T, W>*>(out + base + int64_t(r) * channels + int64_t(jp) * W) = o;
  }
}

// The addend's first channel of batch row 0 (its column addend_col), or null, and the
// elements between its batch rows.
template <class T>
const T* addend_start(const GroupNormArgs& a) {
  return a.addend.defined() ? static_cast<const T*>(a.addend.raw()) + a.addend_col : nullptr;
}
int64_t addend_stride(const GroupNormArgs& a) {
  return a.addend.defined() ? a.addend.dim(1) : 0;
}

// False where the group does not fit (the caller takes the two-launch path).
template <class T>
bool launch_group_norm_resident(const GroupNormArgs& a) {
  const int batch = int(a.x.dim(0)), channels = int(a.x.dim(2)), groups = a.groups;
  const int per_group = channels / groups;
  const T* x = static_cast<const T*>(a.x.raw());
  T* out = static_cast<T*>(a.out.raw());
  const T* gamma = static_cast<const T*>(a.gamma.raw());
  const T* beta = static_cast<const T*>(a.beta.raw());
  const T* addend = addend_start<T>(a);
  // The widest access that the group's width and the addresses allow.
  const uintptr_t addresses = reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(out);
  int width = 1;
  for (int w : {8, 4, 2})
    if (w * int(sizeof(T)) <= 16 && per_group % w == 0 && addresses % (w * sizeof(T)) == 0) {
      width = w;
      break;
    }
  const unsigned grid = unsigned(batch * groups);
  const int64_t rows = a.x.dim(1);
  const int64_t n = rows * (per_group / width);  // accesses per group
  // One access per thread where 1024 threads cover the group, more where not.
  const unsigned threads = unsigned(std::min<int64_t>(kResidentThreads, (n + 31) / 32 * 32));
  const FastDiv group_packs(uint32_t(per_group / width));
  auto launch = [&](auto w) {
    constexpr int W = decltype(w)::value;
    if (n > int64_t(kResident<T, W>) * kResidentThreads) return false;
    group_norm_resident<T, W><<<grid, threads, 0, stream()>>>(x, addend, addend_stride(a), gamma,
                                                              beta, out, rows, channels, groups,
                                                              group_packs, a.eps, a.act);
    CUDA_CHECK_LAUNCH();
    return true;
  };
  switch (width) {
    case 8:
      if constexpr (sizeof(T) <= 2) return launch(std::integral_constant<int, 8>{});
      return false;
    case 4:
      return launch(std::integral_constant<int, 4>{});
    case 2:
      return launch(std::integral_constant<int, 2>{});
    default:
      return launch(std::integral_constant<int, 1>{});
  }
}

// Tensors the whole GPU can hold in registers (about 16 MB: one 512-thread block per
// multiprocessor, up to sixteen 16-byte accesses a thread; 1024 threads with eight
// would cap them at 64 registers, and eight accesses already spilled): one launch that
// reads the tensor once and writes it once. Each block takes a run of rows of one
// batch row, all channels (coalesced whole rows, as the two-launch path reads them),
// and keeps them in registers; it writes its per-group sums, waits for the whole grid
// (a cooperative launch, so that every block is resident), folds every block's sums
// of its batch row in a fixed order (each block the same fold, so the same bits) and
// normalises what it holds. It was meant to save the second read and the launch and
// fold latencies of the two-launch path on tensors of a few megabytes, but measured
// slower on an H200 (bench/cuda-notes.md, v11): under ncu it takes 15 us even on
// 0.3 MB (2x64x1280), at 0.5% of DRAM bandwidth, a fixed cost not yet explained (a
// plain launch with a barrier of our own instead of cooperative groups' measured the
// same). So it runs only when options().group_norm_kernel asks for it.
constexpr int kGridThreads = 512;
// 16-byte accesses a thread holds, at most, in the kernels that hold a tensor in
// registers (grid and cluster): sixteen spill in bf16 (ptxas for sm_90: 1.5-1.8 KB of
// spill loads a thread), none in f16 and f32.
template <class T>
constexpr int kHeldAccesses = std::is_same_v<T, bfloat16> ? 8 : 16;

// Whether a tensor suits the kernels that hold it in packs of N channels: 16-byte
// accesses of x, out and the addend's rows, and a pack in at most two groups.
template <class T>
bool suits_held_packs(const GroupNormArgs& a) {
  constexpr int N = kVec<T>;
  const int channels = int(a.x.dim(2)), per_group = channels / a.groups;
  if (channels % N != 0 || !aligned16(a.x.raw()) || !aligned16(a.out.raw())) return false;
  if (a.addend.defined() && (!aligned16(addend_start<T>(a)) || addend_stride(a) % N != 0))
    return false;
  for (int pk = 0; pk < channels / N; ++pk)
    if (((pk + 1) * N - 1) / per_group - pk * N / per_group > 1) return false;
  return true;
}

// launch(integral_constant<K>) with K the fewest of 1, 2, 4, 8, 16 accesses that hold
// `accesses` (the caller has checked it is at most kHeldAccesses<T>).
template <class T, class Launch>
bool launch_held(int64_t accesses, Launch&& launch) {
  if (accesses <= 1) return launch(std::integral_constant<int, 1>{});
  if (accesses <= 2) return launch(std::integral_constant<int, 2>{});
  if (accesses <= 4) return launch(std::integral_constant<int, 4>{});
  if (accesses <= 8 || kHeldAccesses<T> <= 8) return launch(std::integral_constant<int, 8>{});
  return launch(std::integral_constant<int, kHeldAccesses<T>>{});
}

// v + the addend's pack, rounded to T as the separate add rounded it: the same values
// either way.
template <class T, int N>
__device__ __forceinline__ void add_rounded(Pack<T, N>& v, const Pack<T, N>& ad) {
#pragma unroll
  for (int j = 0; j < N; ++j) v.v[j] = from_float<T>(to_float(v.v[j]) + to_float(ad.v[j]));
}

// A thread's `held` packs at x + offset + k·step (k < held), plus the addend's pack
// (or nothing).
template <class T, int N, int K>
__device__ __forceinline__ void load_held(Pack<T, N> (&v)[K], const T* x, int64_t offset,
                                          int64_t step, int held, const T* addend) {
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (k < held) v[k] = *reinterpret_cast<const Pack<T, N>*>(x + offset + k * step);
  if (addend == nullptr || held == 0) return;
  const Pack<T, N> ad = *reinterpret_cast<const Pack<T, N>*>(addend);
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (k < held) add_rounded(v[k], ad);
}

// out = act(v · scale + shift) for the thread's `held` packs, where load_held read them.
template <class T, int N, int K>
__device__ __forceinline__ void store_held(const Pack<T, N> (&v)[K], T* out, int64_t offset,
                                           int64_t step, int held, const float (&sc)[N],
                                           const float (&sh)[N], Activation act) {
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (k < held)
      *reinterpret_cast<Pack<T, N>*>(out + offset + k * step) =
          apply_scale_shift(v[k], sc, sh, act);
}

template <class T>
struct GroupNormGridParams {
  const T* x;
  const T* gamma;
  const T* beta;
  const T* addend;  // row b at addend + b * addend_stride, or null
  int64_t addend_stride;
  T* out;
  float2* partial;  // [batch][blocks_per_batch][groups] (sum, sum of squares)
  int64_t rows;     // per batch row
  int channels, groups, per_group;
  int blocks_per_batch;
  int64_t rows_per_block;
  float eps;
  Activation act;
};

// Threads: a multiple of the row's packs of N channels, so that each thread keeps one
// pack (and its at most two groups) down all its rows. K: accesses a thread holds.
// Shared memory: [threads] staged sums, then [groups] (mean, rstd) in f64; after
// them [2][channels] scale and shift.
template <class T, int K>
__global__ void __launch_bounds__(kGridThreads, 1) group_norm_grid(GroupNormGridParams<T> p) {
  constexpr int N = kVec<T>;
  extern __shared__ float4 grid_smem[];
  const int packs = p.channels / N;
  const int rows_at_once = blockDim.x / packs;
  const int pack = threadIdx.x % packs;
  const int b = blockIdx.x / p.blocks_per_batch, part = blockIdx.x % p.blocks_per_batch;
  // This thread's rows: first, first + rows_at_once, ... (held: how many of them).
  const int64_t first = int64_t(part) * p.rows_per_block + threadIdx.x / packs;
  const int64_t end = min(p.rows, int64_t(part + 1) * p.rows_per_block);
  const int held = first < end ? int((end - first + rows_at_once - 1) / rows_at_once) : 0;
  const int64_t offset = (int64_t(b) * p.rows + first) * p.channels + int64_t(pack) * N;
  const int step = rows_at_once * p.channels;  // elements between a thread's rows
  // The pack's channels c0..c0+N-1 fall in group g0 up to `split`, in g0 + 1 after.
  const int c0 = pack * N, g0 = c0 / p.per_group;
  const int split = (g0 + 1) * p.per_group - c0;

  Pack<T, N> v[K];
  load_held(v, p.x, offset, step, held,
            p.addend ? p.addend + int64_t(b) * p.addend_stride + c0 : nullptr);
  float s0 = 0.0f, q0 = 0.0f, s1 = 0.0f, q1 = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (k >= held) continue;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float f = to_float(v[k].v[j]);
      if (j < split) {
        s0 += f;
        q0 += f * f;
      } else {
        s1 += f;
        q1 += f * f;
      }
    }
  }
  grid_smem[threadIdx.x] = make_float4(s0, q0, s1, q1);
  __syncthreads();

  // This block's sums per group: a warp per group over the threads whose pack
  // touches it, in a fixed order.
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int g = warp; g < p.groups; g += warps) {
    const int lo = g * p.per_group / N, span = ((g + 1) * p.per_group - 1) / N - lo + 1;
    const int terms = span * rows_at_once;
    float s = 0.0f, q = 0.0f;
    for (int i = lane; i < terms; i += 32) {
      const int pk = lo + i % span;
      const float4 st = grid_smem[(i / span) * packs + pk];
      const bool first_group = pk * N / p.per_group == g;  // else g is the pack's second
      s += first_group ? st.x : st.z;
      q += first_group ? st.y : st.w;
    }
    s = warp_sum(s);
    q = warp_sum(q);
    if (lane == 0)
      p.partial[(int64_t(b) * p.blocks_per_batch + part) * p.groups + g] = make_float2(s, q);
  }
  cooperative_groups::this_grid().sync();

  // Every block of the batch row folds the same partial sums in the same order.
  double2* stats = reinterpret_cast<double2*>(grid_smem);  // [groups] (mean, rstd)
  const int staged = max(int(blockDim.x), p.groups);       // float4s before scale/shift
  float* scale = reinterpret_cast<float*>(grid_smem + staged);
  float* shift = scale + p.channels;
  const double count = double(p.rows) * p.per_group;
  for (int g = warp; g < p.groups; g += warps) {
    const float2* sums = p.partial + int64_t(b) * p.blocks_per_batch * p.groups + g;
    double s = 0.0, q = 0.0;
    for (int i = lane; i < p.blocks_per_batch; i += 32) {
      const float2 v2 = __ldcg(sums + int64_t(i) * p.groups);
      s += v2.x;
      q += v2.y;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      s += __shfl_xor_sync(0xffffffffu, s, o);
      q += __shfl_xor_sync(0xffffffffu, q, o);
    }
    if (lane == 0) {
      const double mean = s / count;
      const double var = fmax(q / count - mean * mean, 0.0);
      stats[g] = make_double2(mean, 1.0 / sqrt(var + double(p.eps)));
    }
  }
  __syncthreads();
  // Per channel, as the two-launch path computes them: out = act(x * scale + shift).
  for (int c = threadIdx.x; c < p.channels; c += blockDim.x) {
    const double2 st = stats[c / p.per_group];
    const double gm = double(to_float(p.gamma[c]));
    scale[c] = float(st.y * gm);
    shift[c] = float(double(to_float(p.beta[c])) - st.x * st.y * gm);
  }
  __syncthreads();
  float sc[N], sh[N];
#pragma unroll
  for (int j = 0; j < N; j += 4) {
    const float4 a = *reinterpret_cast<const float4*>(scale + c0 + j);
    const float4 d = *reinterpret_cast<const float4*>(shift + c0 + j);
    sc[j] = a.x, sc[j + 1] = a.y, sc[j + 2] = a.z, sc[j + 3] = a.w;
    sh[j] = d.x, sh[j + 1] = d.y, sh[j + 2] = d.z, sh[j + 3] = d.w;
  }
  store_held(v, p.out, offset, step, held, sc, sh, p.act);
}

std::atomic<size_t> grid_calls{0};

// False where the tensor does not fit, or its layout does not suit the kernel (the
// caller takes another path): 16-byte accesses, at most 512 packs a row and as many
// groups as threads, a pack in at most two groups.
template <class T>
bool launch_group_norm_grid(const GroupNormArgs& a) {
  constexpr int N = kVec<T>;
  const int batch = int(a.x.dim(0)), channels = int(a.x.dim(2)), groups = a.groups;
  const int64_t rows = a.x.dim(1);
  const int per_group = channels / groups;
  if (!suits_held_packs<T>(a) || !aligned16(a.gamma.raw()) || !aligned16(a.beta.raw()))
    return false;
  const int packs = channels / N;
  if (packs > kGridThreads) return false;
  const int rows_at_once = kGridThreads / packs, threads = rows_at_once * packs;
  if (groups > threads) return false;
  // Cooperative launches need every block resident at once: one block a
  // multiprocessor (the kernel's launch bounds and shared memory allow one).
  const cudaDeviceProp& props = context().props;
  if (!props.cooperativeLaunch) return false;
  const int blocks_per_batch_max = props.multiProcessorCount / batch;
  if (blocks_per_batch_max < 1) return false;
  // Rows spread over as many blocks as there are, each thread holding the fewest.
  const int64_t rows_per_block = (rows + blocks_per_batch_max - 1) / blocks_per_batch_max;
  const int64_t accesses = (rows_per_block + rows_at_once - 1) / rows_at_once;
  if (accesses > kHeldAccesses<T>) return false;
  const int blocks_per_batch = int((rows + rows_per_block - 1) / rows_per_block);
  const size_t smem =
      size_t(std::max(threads, groups)) * sizeof(float4) + size_t(2) * channels * sizeof(float);

  const auto buffer = scratch(size_t(batch) * blocks_per_batch * groups * sizeof(float2));
  GroupNormGridParams<T> params{static_cast<const T*>(a.x.raw()),
                                static_cast<const T*>(a.gamma.raw()),
                                static_cast<const T*>(a.beta.raw()),
                                addend_start<T>(a),
                                addend_stride(a),
                                static_cast<T*>(a.out.raw()),
                                static_cast<float2*>(buffer->data()),
                                rows,
                                channels,
                                groups,
                                per_group,
                                blocks_per_batch,
                                rows_per_block,
                                a.eps,
                                a.act};
  auto launch = [&](auto k) -> bool {
    constexpr int K = decltype(k)::value;
    const void* kernel = reinterpret_cast<const void*>(group_norm_grid<T, K>);
    static int configured = 48 << 10;  // per instantiation
    if (int(smem) > configured) {
      CUDA_CHECK(cudaFuncSetAttribute(group_norm_grid<T, K>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      configured = int(smem);
    }
    int resident = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, group_norm_grid<T, K>,
                                                             threads, smem));
    if (resident < 1) return false;
    void* args[] = {&params};
    CUDA_CHECK(cudaLaunchCooperativeKernel(kernel, dim3(unsigned(batch * blocks_per_batch)),
                                           dim3(unsigned(threads)), args, smem, stream()));
    CUDA_CHECK_LAUNCH();
    grid_calls.fetch_add(1, std::memory_order_relaxed);
    return true;
  };
  return launch_held<T>(accesses, launch);
}

// Tensors of up to a few tens of megabytes in one launch that reads them once: thread
// block clusters (Hopper) of S blocks, one cluster per batch row and slice of whole
// groups (the fewest groups that make 64 bytes of a row, so that a warp's reads are
// runs of at least two sectors), its blocks each taking a run of the rows and holding
// them in registers. The blocks swap their per-group sums through distributed shared
// memory, in a fixed order (every block the same fold, so the same bits), twice: the
// mean, then the centred variance from the registers, as the one-block kernel takes
// them. One read and one write of the tensor against two reads and a write for the
// two launches, and no launch or L2 round trips between the statistics and the apply.
constexpr int kClusterThreads = 256;
constexpr int kClusterMaxSize = 16;    // blocks a cluster (8 portable, 16 on H100/H200)
constexpr int kClusterMaxGroups = 16;  // groups a slice

template <class T>
struct GroupNormClusterParams {
  const T* x;
  const T* gamma;
  const T* beta;
  const T* addend;  // row b at addend + b * addend_stride, or null
  int64_t addend_stride;
  T* out;
  int64_t rows;  // per batch row
  int channels, groups, per_group;
  int slice_groups, slice_packs;  // a cluster's groups, and their packs of N channels a row
  int64_t rows_per_block;
  float eps;
  Activation act;
};

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900  // clusters: sm_90 and later
// The cluster's sum of each block's part[lg], folded in block-rank order in f64 (all
// the remote loads issued before the sum: one round trip, not one a block).
__device__ __forceinline__ double cluster_fold(cooperative_groups::cluster_group& cluster,
                                               float* part, int lg) {
  const int n = int(cluster.num_blocks());
  float v[kClusterMaxSize];
#pragma unroll
  for (int r = 0; r < kClusterMaxSize; ++r)
    v[r] = r < n ? *cluster.map_shared_rank(part + lg, unsigned(r)) : 0.0f;
  double s = 0.0;
#pragma unroll
  for (int r = 0; r < kClusterMaxSize; ++r) s += v[r];
  return s;
}
#endif

// K: the accesses a thread holds in registers.
template <class T, int K>
__global__ void __launch_bounds__(kClusterThreads, 2)
    group_norm_cluster(GroupNormClusterParams<T> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // the launcher takes this kernel only on sm_90 and later
#else
  constexpr int N = kVec<T>;
  __shared__ float2 stage[kClusterThreads];  // a thread's sums for its pack's (at most) two groups
  __shared__ float part_s[kClusterMaxGroups], part_q[kClusterMaxGroups];  // read by the cluster
  __shared__ float mean_s[kClusterMaxGroups], rstd_s[kClusterMaxGroups];
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  const int size = int(cluster.num_blocks()), rank = int(cluster.block_rank());
  const int slices = p.groups / p.slice_groups;
  const int cl = int(blockIdx.x) / size, b = cl / slices, slice = cl % slices;
  const int P = p.slice_packs, rows_at_once = kClusterThreads / P;
  const int tid = int(threadIdx.x), pack = tid % P, trow = tid / P;
  const int64_t r0 = int64_t(rank) * p.rows_per_block;
  const int64_t r1 = min(p.rows, r0 + p.rows_per_block);
  const int64_t first = r0 + trow;
  const int held =
      trow < rows_at_once && first < r1 ? int((r1 - first + rows_at_once - 1) / rows_at_once) : 0;
  const int slice_c0 = slice * p.slice_groups * p.per_group;
  const int c0 = slice_c0 + pack * N;
  // Local groups: the pack's channels fall in lg0 up to `split`, in lg0 + 1 after.
  const int lg0 = c0 / p.per_group - slice * p.slice_groups;
  const int split = (c0 / p.per_group + 1) * p.per_group - c0;
  const int64_t offset = (int64_t(b) * p.rows + first) * p.channels + c0;
  const int64_t step = int64_t(rows_at_once) * p.channels;

  const T* addend = p.addend ? p.addend + int64_t(b) * p.addend_stride + c0 : nullptr;
  Pack<T, N> v[K];
  load_held(v, p.x, offset, step, held, addend);
  // f(pack) for each of the thread's packs.
  auto each = [&](auto&& f) {
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (k < held) f(v[k]);
  };

  // This block's sum of each local group of stage's (first, second) into part[lg]: a
  // warp per group over the threads whose pack touches it, in a fixed order.
  const int warps = kClusterThreads / 32, warp = tid / 32, lane = tid % 32;
  auto block_sums = [&](float* part) {
    __syncthreads();
    for (int lg = warp; lg < p.slice_groups; lg += warps) {
      const int lo = lg * p.per_group / N, span = ((lg + 1) * p.per_group - 1) / N - lo + 1;
      const int terms = span * rows_at_once;
      float s = 0.0f;
      for (int i = lane; i < terms; i += 32) {
        const int pk = lo + i % span;
        const float2 st = stage[(i / span) * P + pk];
        s += (pk * N) / p.per_group == lg ? st.x : st.y;  // else lg is the pack's second
      }
      s = warp_sum(s);
      if (lane == 0) part[lg] = s;
    }
  };
  const double count = double(p.rows) * p.per_group;

  float s0 = 0.0f, s1 = 0.0f;
  each([&](const Pack<T, N>& x) {
#pragma unroll
    for (int j = 0; j < N; ++j) (j < split ? s0 : s1) += to_float(x.v[j]);
  });
  stage[tid] = make_float2(s0, s1);
  block_sums(part_s);
  cluster.sync();
  if (tid < p.slice_groups) mean_s[tid] = float(cluster_fold(cluster, part_s, tid) / count);
  __syncthreads();

  const float m0 = mean_s[lg0], m1 = lg0 + 1 < p.slice_groups ? mean_s[lg0 + 1] : 0.0f;
  float q0 = 0.0f, q1 = 0.0f;
  each([&](const Pack<T, N>& x) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float d = to_float(x.v[j]) - (j < split ? m0 : m1);
      (j < split ? q0 : q1) += d * d;
    }
  });
  stage[tid] = make_float2(q0, q1);
  block_sums(part_q);
  cluster.sync();
  if (tid < p.slice_groups)
    rstd_s[tid] = float(1.0 / sqrt(cluster_fold(cluster, part_q, tid) / count + double(p.eps)));
  // The other blocks may read part_s/part_q until they pass this barrier: arrive now,
  // wait before leaving (a block's shared memory must outlive their reads).
  asm volatile("barrier.cluster.arrive.release;" ::: "memory");
  __syncthreads();

  if (held > 0) {
    const float r0s = rstd_s[lg0], r1s = lg0 + 1 < p.slice_groups ? rstd_s[lg0 + 1] : 0.0f;
    float sc[N], sh[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float rs = j < split ? r0s : r1s, mu = j < split ? m0 : m1;
      sc[j] = rs * to_float(p.gamma[c0 + j]);
      sh[j] = to_float(p.beta[c0 + j]) - mu * sc[j];
    }
    store_held(v, p.out, offset, step, held, sc, sh, p.act);
  }
  asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
#endif
}

std::atomic<size_t> cluster_calls{0};

// False where the tensor does not suit the kernel (the caller takes another path):
// before sm_90; accesses of 16 bytes; a pack of N channels in at most two groups; a
// slice of at most 16 groups making a whole number of packs and 64 bytes; rows that 16
// blocks of 256 threads hold in registers with at most 4 accesses a thread. Where
// `chosen` (Auto), at 2 to 4 accesses a thread: H100, bench/results/2026-12-06-h100-v27,
// against the other paths.
// At one access (under a megabyte: SD1.5's and SDXL's 2x64x1280) the one-block kernel,
// with no cluster barriers, takes 7 us against 10. Holding more than 4 measured slower
// (2x4096x320 25 us against 19, 1x16384x512 41 against 29): at 16, 128 registers a
// thread leave room for 14 clusters of 16 blocks at once where 16 were launched (ncu),
// two waves. Between, it is the fastest: 2x1024x640 12.0 us against 15.5, the VAE's
// 1x4096x512 12.5 against 16.3, 2x256x1280 11.0 against 11.9. A variant that held
// nothing and read its rows three times (L2 keeping the tensor) lost to the other
// paths on every shape of 5-32 MB (…-v28: 2x4096x640 36 us against 25, 1x65536x256 89
// against 47) and was removed.
template <class T>
bool launch_group_norm_cluster(const GroupNormArgs& a, bool chosen) {
  constexpr int N = kVec<T>;
  const cudaDeviceProp& props = context().props;
  if (props.major < 9) return false;
  const int batch = int(a.x.dim(0)), channels = int(a.x.dim(2)), groups = a.groups;
  const int64_t rows = a.x.dim(1);
  const int per_group = channels / groups;
  if (!suits_held_packs<T>(a)) return false;
  int slice_groups = 0;
  for (int g = 1; g <= std::min(groups, kClusterMaxGroups); ++g)
    if (groups % g == 0 && g * per_group % N == 0 && g * per_group * int(sizeof(T)) >= 64) {
      slice_groups = g;
      break;
    }
  if (slice_groups == 0) return false;
  const int slice_packs = slice_groups * per_group / N;
  if (slice_packs > kClusterThreads) return false;
  const int rows_at_once = kClusterThreads / slice_packs;
  const int64_t clusters = int64_t(batch) * (groups / slice_groups);
  // The fewest blocks a cluster that give every multiprocessor one and hold the rows.
  auto accesses = [&](int size) {
    const int64_t rows_per_block = (rows + size - 1) / size;
    return (rows_per_block + rows_at_once - 1) / rows_at_once;
  };
  int size = 1;
  while (size < kClusterMaxSize &&
         (clusters * size < props.multiProcessorCount || accesses(size) > kHeldAccesses<T>))
    size *= 2;
  const int64_t held = accesses(size);
  if (held > 4 || (chosen && held < 2) || clusters * size > INT32_MAX) return false;

  GroupNormClusterParams<T> params{static_cast<const T*>(a.x.raw()),
                                   static_cast<const T*>(a.gamma.raw()),
                                   static_cast<const T*>(a.beta.raw()),
                                   addend_start<T>(a),
                                   addend_stride(a),
                                   static_cast<T*>(a.out.raw()),
                                   rows,
                                   channels,
                                   groups,
                                   per_group,
                                   slice_groups,
                                   slice_packs,
                                   (rows + size - 1) / size,
                                   a.eps,
                                   a.act};
  auto launch = [&](auto k) -> bool {
    constexpr int K = decltype(k)::value;
    auto* kernel = group_norm_cluster<T, K>;
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(unsigned(clusters * size));
    config.blockDim = dim3(kClusterThreads);
    config.stream = stream();
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = unsigned(size);
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    // Whether a cluster of this size can be resident, asked once per size.
    static std::map<int, bool> fits;  // per instantiation
    auto it = fits.find(size);
    if (it == fits.end()) {
      if (size > 8)
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
      int n = 0;
      const cudaError_t e = cudaOccupancyMaxActiveClusters(&n, kernel, &config);
      if (e != cudaSuccess) (void)cudaGetLastError();
      it = fits.emplace(size, e == cudaSuccess && n > 0).first;
    }
    if (!it->second) return false;
    CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, params));
    CUDA_CHECK_LAUNCH();
    cluster_calls.fetch_add(1, std::memory_order_relaxed);
    return true;
  };
  if (held == 1) return launch(std::integral_constant<int, 1>{});
  if (held == 2) return launch(std::integral_constant<int, 2>{});
  return launch(std::integral_constant<int, 4>{});
}

// Threads across a row's packs (all of them where `threads` allow), the rest of the
// block down the rows.
dim3 pack_block(int packs, int threads) {
  const int across = std::min(packs, threads);
  return dim3{unsigned(across), unsigned(threads / across)};
}

// The two-launch GroupNorm's first launch: statistics of the rows `src` gives ([batch,
// rows, channels] as they see them) into a per-channel scale and shift. The caller has
// checked batch (at most Context::kCounters) and that batch · rows · channels / N fits
// 32 bits.
template <class T, int N, class Rows>
NormScaleShift statistics(const Rows& src, int batch, int64_t rows, int channels, int groups,
                          float eps, const T* gamma, const T* beta) {
  const int packs = channels / N;
  const int sms = context().props.multiProcessorCount;
  // The statistics' launch shape, from a same-run comparison of shapes on an H200
  // (bench/results/2026-12-04-h200-v21, call 2; per op, graph replay):
  // - Large tensors (4M values a batch row and more: the VAE's, SDXL's 128×128 level)
  //   take 512-thread blocks, as many as are resident at once (one wave), eight rows'
  //   loads in flight a thread (four where the rows are an upsampler's phases, which
  //   are also stored). The first form's 256-thread blocks, six a multiprocessor
  //   where four were resident, left a second, partial wave and read at 38% of DRAM
  //   bandwidth under ncu: 1x262144x128 0.483 -> 0.423 ms for six calls,
  //   1x1048576x128 1.543 -> 1.391.
  // - Smaller ones keep fewer, longer blocks (two a multiprocessor in all, at least
  //   eight rows a thread row): the last block's fold of the partial sums is a chain of
  //   L2 round trips that grows with their number. One wave of short blocks made
  //   1x4096x512 0.188 -> 0.255 ms for eleven calls.
  const bool large = rows * channels >= (int64_t(1) << 22);
  const int threads = large ? 512 : 256;
  const dim3 block = pack_block(packs, threads);
  const int block_threads = int(block.x * block.y);
  const size_t smem =
      (size_t(2) * block_threads * N + size_t(2) * norm_stats_channel_floats(channels)) *
          sizeof(float) +
      sizeof(int);
  float* scale = nullptr;
  float* shift = nullptr;
  std::shared_ptr<Buffer> buffer;
  auto launch = [&](auto u) {
    constexpr int U = decltype(u)::value;
    auto* kernel = group_norm_stats<T, N, U, Rows>;
    static int configured = 48 << 10;  // per instantiation
    if (int(smem) > configured) {
      CUDA_CHECK(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      configured = int(smem);
    }
    int per_sm = 2;
    if (large) {
      static std::map<std::pair<int, size_t>, int> resident;  // per instantiation
      auto it = resident.find({block_threads, smem});
      if (it == resident.end()) {
        int n = 0;
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, block_threads, smem));
        it = resident.emplace(std::make_pair(block_threads, smem), n).first;
      }
      per_sm = it->second;
    }
    const int64_t target = std::max<int64_t>(1, int64_t(sms) * std::max(per_sm, 1) / batch);
    const int64_t rows_per_block =
        std::max<int64_t>(large ? block.y : int64_t(block.y) * 8, (rows + target - 1) / target);
    const int splits = int((rows + rows_per_block - 1) / rows_per_block);
    // The partial sums, then scale and shift, 32-byte aligned (the apply reads float4s).
    const size_t partial_floats = (size_t(batch) * splits * groups * 2 + 7) / 8 * 8;
    const size_t channel_floats = size_t(batch) * channels;
    buffer = scratch((partial_floats + 2 * channel_floats) * sizeof(float));
    float* partial = static_cast<float*>(buffer->data());
    scale = partial + partial_floats;
    shift = scale + channel_floats;
    kernel<<<dim3{unsigned(splits), unsigned(batch)}, block, smem, stream()>>>(
        src, partial, gamma, beta, scale, shift, context().counters, rows, rows_per_block, channels,
        groups, eps, options().group_norm_stats_spread);
    CUDA_CHECK_LAUNCH();
  };
  // On the largest (16M values a batch row and more: 32 MB in f16), four loads a thread
  // and two blocks a multiprocessor (64 registers against 86): as many bytes in flight
  // and twice the warps to cover the arithmetic between them. Per GroupNorm call, four
  // against eight (H100, two rounds, bench/results/2026-12-06-h100-v29, call 4):
  // 1x1048576x128 295 against 305 µs, 1x262144x256 158 against 163, 1x65536x512 86.5
  // against 88.4, 1x262144x128 84.4 against 86.6, 1x65536x256 46.2 against 46.9; but
  // 1x16384x512 31.9 against 29.7 (and 29.7 against 28.7), which keeps eight.
  int loads = options().group_norm_stats_loads;
  if (loads == 0) loads = rows * channels >= (int64_t(1) << 24) ? 4 : 8;
  if (large && loads == 8 && !Rows::kStores)
    launch(std::integral_constant<int, 8>{});
  else
    launch(std::integral_constant<int, 4>{});
  return {buffer, scale, shift};
}

// The two-launch GroupNorm: statistics (above), then out = act(x (+ addend) · scale +
// shift) over x, a tensor of the same shape as src's rows.
template <class T, int N, class Rows>
void stats_and_apply(const Rows& src, int batch, int64_t rows, int channels, int groups, float eps,
                     const T* gamma, const T* beta, const T* x, const T* addend,
                     int64_t addend_stride, T* out, Activation act) {
  const NormScaleShift st = statistics<T, N>(src, batch, rows, channels, groups, eps, gamma, beta);
  const int packs = channels / N;
  const int64_t total = int64_t(batch) * rows * packs;
  const int sms = context().props.multiProcessorCount;
  // Apply: a grid-stride loop over as many 256-thread blocks as are resident at once.
  // Four accesses a step measured level with two and 0.7 ms faster than one on the
  // 1024² VAE decode's GroupNorm (3.76 against 4.45 ms, with the fast SiLU).
  constexpr int U = 4;
  static const int resident = [] {
    int n = 0;
    CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, group_norm_apply<T, N, U>, 256, 0));
    return std::max(n, 1);
  }();
  int64_t blocks = std::min<int64_t>((total + 255) / 256, int64_t(sms) * resident);
  // The fewest blocks whose threads make a whole number of rows' packs: a grid of a
  // multiple of them keeps each thread on one pack of channels (group_norm_apply's
  // `reuse`), where there are that many.
  const int64_t whole = packs / std::gcd(packs, 256);
  const bool reuse = options().group_norm_apply_reuse && blocks >= whole;
  if (reuse) blocks = blocks / whole * whole;
  // x is ready before the statistics end unless the statistics kernel writes it (an
  // upsampler's interleaved phases).
  launch_dependent(options().group_norm_pdl, group_norm_apply<T, N, U>, dim3(unsigned(blocks)),
                   dim3(256), 0, x, addend, addend_stride, out, st.scale, st.shift, uint32_t(total),
                   FastDiv(uint32_t(rows * packs)), FastDiv(uint32_t(packs)), act, reuse,
                   !Rows::kStores);
}

template <class T, int N>
void launch_group_norm(const GroupNormArgs& a) {
  const int batch = int(a.x.dim(0)), channels = int(a.x.dim(2));
  KILN_CHECK(batch <= Context::kCounters, "group_norm: batch ", batch, " (at most ",
             Context::kCounters, " on CUDA)");
  const int64_t rows = a.x.dim(1);
  // Checked before anything is launched (a throw inside a graph capture would leave
  // half of the op in it).
  KILN_CHECK(int64_t(batch) * rows * (channels / N) <= INT32_MAX, "group_norm: ", a.x.describe(),
             " is more than one launch indexes on CUDA (2^31 accesses)");
  const T* x = static_cast<const T*>(a.x.raw());
  const T* addend = addend_start<T>(a);
  const PlainRows<T, N> src{x, addend, addend_stride(a), rows, channels};
  stats_and_apply<T, N>(src, batch, rows, channels, a.groups, a.eps,
                        static_cast<const T*>(a.gamma.raw()), static_cast<const T*>(a.beta.raw()),
                        x, addend, addend_stride(a), static_cast<T*>(a.out.raw()), a.act);
}

std::atomic<size_t> interleave_norm_calls{0};

}  // namespace

size_t group_norm_grid_calls() {
  return grid_calls.load(std::memory_order_relaxed);
}

size_t group_norm_cluster_calls() {
  return cluster_calls.load(std::memory_order_relaxed);
}

void group_norm(const GroupNormArgs& args) {
  if (args.x.numel() == 0) return;
  // Checked before anything is launched (a throw inside a graph capture would leave
  // half of the op in it).
  KILN_CHECK(args.x.dim(2) <= 16384, "group_norm: ", args.x.dim(2),
             " channels (at most 16384 on CUDA)");
  // Every path adds the addend (row b of it) on the way in, rounded to x's dtype as a
  // separate add would store it (before, the one-block and two-launch paths took
  // that separate add: a launch and a pass over the tensor more, 22 a step on SD1.5).
  // ops::group_norm has checked the addend: [B, W], columns addend_col + C in range.
  const GroupNormArgs& a = args;
  const int64_t per_group = a.x.dim(2) / a.groups;
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (options().group_norm_kernel == Options::GroupNormKernel::Grid &&
        launch_group_norm_grid<T>(a))
      return;
    if (options().group_norm_kernel == Options::GroupNormKernel::Cluster &&
        launch_group_norm_cluster<T>(a, false))
      return;
    if (options().group_norm_kernel == Options::GroupNormKernel::Auto &&
        launch_group_norm_cluster<T>(a, true))
      return;
    // One block per group where the group is small, or where its accesses are 16
    // bytes wide and there are blocks enough for every multiprocessor. Narrower groups
    // of many rows (SD1.5's 10 and 20 channels at 64x64 and 32x32) are faster through
    // the two launches, which read whole rows: one block per group made 2x4096x320
    // 39 us against 23. So are large groups in too few blocks: SDXL's 2x1024x1280 (64
    // blocks of 40960 values) 24.4 against 21.6 us a call in the step, where SD1.5's
    // 2x256x1280 (10240 values) kept the one block at 11.9 against 15.6 (H100,
    // bench/results/2026-12-05-h100-v25).
    const int64_t group_values = a.x.dim(1) * per_group;
    const bool fills_gpu = a.x.dim(0) * a.groups >= int64_t(context().props.multiProcessorCount);
    if (options().group_norm_kernel != Options::GroupNormKernel::TwoLaunch &&
        (group_values <= 16384 || (per_group % kVec<T> == 0 && fills_gpu)) &&
        launch_group_norm_resident<T>(a))
      return;
    if (pack_width<T>(a.x.dim(2), {a.x.raw(), a.out.raw()}) == 1)
      launch_group_norm<T, 1>(a);
    else
      launch_group_norm<T, kVec<T>>(a);
  });
}

bool group_norm_scale_shift_applies(const GroupNormArgs& a) {
  const int64_t batch = a.x.dim(0), rows = a.x.dim(1), channels = a.x.dim(2);
  const int64_t n = 16 / int64_t(dtype_size(a.x.dtype()));  // kVec of x's type
  return !a.addend.defined() && a.x.numel() > 0 && batch <= Context::kCounters &&
         channels <= 16384 && channels % n == 0 && aligned16(a.x.raw()) &&
         batch * rows * (channels / n) <= INT32_MAX;
}

NormScaleShift group_norm_scale_shift(const GroupNormArgs& a) {
  KILN_CHECK(group_norm_scale_shift_applies(a), "group_norm_scale_shift: ", a.x.describe(),
             " is not taken");
  const int batch = int(a.x.dim(0)), channels = int(a.x.dim(2));
  const int64_t rows = a.x.dim(1);
  NormScaleShift st;
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    constexpr int N = kVec<T>;
    const PlainRows<T, N> src{static_cast<const T*>(a.x.raw()), nullptr, 0, rows, channels};
    st =
        statistics<T, N>(src, batch, rows, channels, a.groups, a.eps,
                         static_cast<const T*>(a.gamma.raw()), static_cast<const T*>(a.beta.raw()));
  });
  return st;
}

size_t interleave_group_norm_calls() {
  return interleave_norm_calls.load(std::memory_order_relaxed);
}

bool interleave_phases_group_norm(const InterleaveGroupNormArgs& a) {
  const int64_t batch = a.out.dim(0), rows = a.out.dim(1) * a.out.dim(2), channels = a.out.dim(3);
  if (a.out.numel() == 0 || batch > Context::kCounters || channels > 16384) return false;
  bool done = false;
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    constexpr int N = kVec<T>;
    // 16-byte accesses only (every channel count the models have); else the two ops.
    if (channels % N != 0 || !aligned16(a.x.raw()) || !aligned16(a.out.raw()) ||
        !aligned16(a.normed.raw()) || batch * rows * (channels / N) > INT32_MAX)
      return;
    const PhaseRows<T, N> src{static_cast<const T*>(a.x.raw()),
                              static_cast<T*>(a.out.raw()),
                              FastDiv(uint32_t(a.out.dim(2))),
                              a.x.dim(1),
                              a.x.dim(2),
                              rows,
                              int(channels)};
    stats_and_apply<T, N>(src, int(batch), rows, int(channels), a.groups, a.eps,
                          static_cast<const T*>(a.gamma.raw()), static_cast<const T*>(a.beta.raw()),
                          static_cast<const T*>(a.out.raw()), nullptr, 0,
                          static_cast<T*>(a.normed.raw()), a.act);
    interleave_norm_calls.fetch_add(1, std::memory_order_relaxed);
    done = true;
  });
  return done;
}

}  // namespace kiln::cuda
