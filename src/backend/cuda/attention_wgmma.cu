// Attention on Hopper's warpgroup MMAs (sm_90a), for attention.cu.
#include <atomic>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/attention_tile.h"
#include "backend/cuda/device.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/wgmma.cuh"
#include "backend/cuda/wgmma_sync.cuh"

// Built for GPUs other than sm_90a the kernel bodies below are compiled out, which
// leaves their helpers unreferenced on that pass.
#pragma nv_diag_suppress 177

namespace kiln::cuda {
namespace {

using attention_tile::core_offset;
using attention_tile::item;

// Hopper (sm_90a): the same scheme on warpgroup MMAs. A warpgroup (four warps) takes
// 64 query rows; S = Q·K^T and O += P·V are wgmma.mma_async with Q and P from
// registers (P straight from the score accumulators, as above) and K and V read by
// the tensor cores from shared memory, once per warpgroup instead of once per warp
// (the kernel above loads a 512-byte ldmatrix fragment per two MMAs). A block has WG
// warpgroups (64·WG rows) sharing 64-key tiles of K and V.
//
// Opt-in (options().flash_wgmma): correct, but on an H200 slower than cuDNN's SDPA on
// every UNet shape, and ncu finds it latency-bound (half the issue slots idle, no
// pipe near its limit). bench/cuda-notes.md (v14) has the numbers and what is
// missing: a producer warp, ping-pong between consumer warpgroups, larger tiles.
//
// K and V tiles sit in wgmma's unswizzled layout: 8 keys × 8 features (16 bytes a
// key) make a 128-byte core matrix, and core (key group g, feature chunk c) is at
// (g·DP/8 + c)·128 bytes. For S that is B = K^T K-major (features adjacent: leading
// offset 128 bytes, key groups DP·16 apart); for P·V it is B = V N-major (transposed:
// feature chunks 128 bytes apart, key groups DP·16).
//
// ONES (head dim DP − 8, as SD1.5's 40 in 48): the padding chunk of V holds a 1 in
// its first column, so P·V also sums each row of P in f32 on the tensor cores, the
// sum of exactly the rounded probabilities it weighs V with. That frees the f32 adds.
// By the units' peak rates (16 exponentials against 4096 FLOPs a cycle and
// multiprocessor) head dim 40, one exponential per 192 FLOPs at these paddings, is
// bound by the exponentials, not the tensor cores. They are f32 (ex2.approx.ftz.f32,
// one MUFU.EX2 each): ex2.approx.f16x2, used here before, is two MUFU.EX2.F16 on
// sm_90a (tools/py/sass_loops.py), so it saved no special-function work, cost a PRMT a
// pair and rounded the exponent to f16.

constexpr int kWgmmaBlockN = 64;  // keys per tile
constexpr int kWgmmaStages = 3;   // K/V tiles in flight

// cp.async's writes to shared memory, made visible to the tensor cores' (async) reads.
__device__ __forceinline__ void fence_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The descriptors of a K and a V tile at `p` (attention_tile.h).
template <class T>
__device__ __forceinline__ uint64_t k_descriptor(const T* p, int chunks) {
  return attention_tile::k_descriptor(smem_address(p), chunks, sizeof(T));
}
template <class T>
__device__ __forceinline__ uint64_t v_descriptor(const T* p, int chunks) {
  return attention_tile::v_descriptor(smem_address(p), chunks, sizeof(T));
}

// `desc` moved to stage `stage` of a ring of tiles of `tile` elements of T, and on by
// `elements` within it. The start address is the low word's bits 0–13 (address / 16)
// and every shared-memory address fits them, so the offset adds to the low word alone.
// The stage's part and the k-step's are separate terms in 16-byte units, so the
// stage's is worked out once a tile and each MMA's descriptor is one add: ptxas had
// rebuilt every descriptor from its address (six uniform instructions an MMA), and
// with one offset shifted after the sum, still about five (tools/py/sass_loops.py).
template <class T>
__device__ __forceinline__ uint64_t desc_at(uint64_t desc, unsigned stage, int tile, int elements) {
  constexpr int kUnit = 16 / int(sizeof(T));
  const uint32_t lo = uint32_t(desc) + stage * uint32_t(tile / kUnit) + uint32_t(elements / kUnit);
  return uint64_t(uint32_t(desc >> 32)) << 32 | lo;
}

// ROWS keys × DP features into the core-matrix layout above; chunks at or past
// `chunks` are left alone (ONES keeps its constant chunk there), the rest past d
// and keys past valid_rows are zeros. Eight consecutive threads fill one core
// matrix (no bank conflicts on the stores).
template <class T, int DP, int ROWS, int THREADS>
__device__ __forceinline__ void load_core_tile(T* s, const T* g, int valid_rows, int64_t stride,
                                               int d, int chunks) {
  constexpr int kChunks = DP / 8;
  for (int i = threadIdx.x; i < ROWS * kChunks; i += THREADS) {
    const auto [r, c] = item(i, kChunks);
    if (c >= chunks) continue;
    const bool ok = r < valid_rows && c * 8 < d;
    cp_async_16(s + core_offset(r, c, kChunks), ok ? g + r * stride + c * 8 : g, ok ? 16 : 0);
  }
}

// One warpgroup's online softmax of a 64 × N score tile (rows r = 0, 1 of this
// thread: rows `group` and `group + 8` of its warp): keys from `valid` on masked,
// running maxima updated, P packed as the A operand of P·V, and each row's rescale of
// what came before in `correction`. With `mix`, also a word that depends on every
// exponential (the producer kernel's ANCHOR store): the XOR of the packed P words, or
// of the row sums.
template <class T, int N, bool SUM, int CHAINS = 1>
__device__ __forceinline__ void wgmma_softmax(float (&s)[N / 2], uint32_t (&pa)[N / 16][4],
                                              float (&row_max)[2], float (&row_sum)[2],
                                              float (&correction)[2], int valid, int quad,
                                              float scale_log2, uint32_t* mix = nullptr) {
  constexpr int kTilesN = N / 8;
  if (valid < N) {
#pragma unroll
    for (int t = 0; t < kTilesN; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (t * 8 + quad * 2 + (e & 1) >= valid) s[t * 4 + e] = -INFINITY;
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    // The row's maximum over this thread's pairs in CHAINS chains: one chain of 16
    // dependent FMNMX (BN 128) is about 80 cycles of latency before the first
    // exponential; more chains take registers (four spill in the plain kernel at d64).
    static_assert(kTilesN % CHAINS == 0, "whole chains");
    float m[CHAINS];
#pragma unroll
    for (int c = 0; c < CHAINS; ++c) m[c] = fmaxf(s[c * 4 + 2 * r], s[c * 4 + 2 * r + 1]);
#pragma unroll
    for (int t = CHAINS; t < kTilesN; ++t)
      m[t % CHAINS] = fmaxf(m[t % CHAINS], fmaxf(s[t * 4 + 2 * r], s[t * 4 + 2 * r + 1]));
#pragma unroll
    for (int w = CHAINS / 2; w >= 1; w /= 2)
#pragma unroll
      for (int c = 0; c < w; ++c) m[c] = fmaxf(m[c], m[c + w]);
    float mx = m[0];
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float new_max = fmaxf(row_max[r], mx);
    const float base = new_max == -INFINITY ? 0.0f : new_max * scale_log2;
    correction[r] = fast_exp2(row_max[r] * scale_log2 - base);
    row_max[r] = new_max;
    // Chunk t's pair for row r goes to pa[t / 2][r + 2·(t % 2)] (mma.sync's A layout).
    float sum = 0.0f;
#pragma unroll
    for (int t = 0; t < kTilesN; ++t) {
      const float a = fast_exp2(fmaf(s[t * 4 + 2 * r], scale_log2, -base));
      const float b = fast_exp2(fmaf(s[t * 4 + 2 * r + 1], scale_log2, -base));
      if constexpr (SUM) sum += a + b;
      pa[t / 2][r + 2 * (t % 2)] = pack2<T>(a, b);
      if (!SUM && mix) *mix ^= pa[t / 2][r + 2 * (t % 2)];
    }
    if constexpr (SUM) row_sum[r] = row_sum[r] * correction[r] + sum;
  }
  if (SUM && mix) *mix = __float_as_uint(row_sum[0]) ^ __float_as_uint(row_sum[1]);
}

// O's rows (r = 0, 1 of this thread) scaled by their softmax corrections.
template <int N>
__device__ __forceinline__ void wgmma_rescale(float (&o)[N], const float (&correction)[2]) {
#pragma unroll
  for (int t = 0; t < N / 4; ++t) {
    o[t * 4 + 0] *= correction[0];
    o[t * 4 + 1] *= correction[0];
    o[t * 4 + 2] *= correction[1];
    o[t * 4 + 3] *= correction[1];
  }
}

// A warp's 16 rows of O (from query row row0 on) divided by their sums and stored.
// With ONES, column DP − 8 of O (the row's quad-0 thread) holds the row's sum.
template <class T, int DP, bool ONES>
__device__ __forceinline__ void wgmma_store_out(const float (&o)[DP / 2], const float (&row_sum)[2],
                                                const AttentionParams& p, int batch, int head,
                                                int row0, int lane) {
  constexpr int kTilesD = DP / 8;
  const int group = lane >> 2, quad = lane & 3;
  T* og = static_cast<T*>(p.out) + int64_t(batch) * p.sq * p.o_stride + int64_t(head) * p.d;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total;
    if constexpr (ONES) {
      total = __shfl_sync(0xffffffffu, o[(kTilesD - 1) * 4 + 2 * r], lane & ~3);
    } else {
      total = row_sum[r];
      total += __shfl_xor_sync(0xffffffffu, total, 1);
      total += __shfl_xor_sync(0xffffffffu, total, 2);
    }
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    const int qi = row0 + group + r * 8;
    if (qi >= p.sq) continue;
    T* orow = og + int64_t(qi) * p.o_stride;
#pragma unroll
    for (int t = 0; t < kTilesD; ++t) {
      const int col = t * 8 + quad * 2;
      if (col < p.d)
        *reinterpret_cast<uint32_t*>(orow + col) =
            pack2<T>(o[t * 4 + 2 * r] * inv, o[t * 4 + 2 * r + 1] * inv);
    }
  }
}

// The loop is software-pipelined within each warpgroup, so that its tensor-core work
// overlaps its own softmax: iteration j issues S(j+1) = Q·K(j+1)^T and O += P(j)·V(j)
// back to back, takes the softmax of S(j+1) while P(j)·V(j) may still run, and only
// then waits for it to rescale O. K and V go through a ring of three stages, loaded
// two tiles ahead, with one block barrier an iteration.
//
// That is the order in the PTX. ptxas's scheduler moves the wait for P·V
// (WARPGROUP.DEPBAR.LE gsb0, 0x0) up, ahead of the softmax's exponentials
// (tools/py/sass_loops.py, v38), so here the softmax never runs under its own P·V; the
// producer kernel's ANCHOR form below keeps the wait in place.
// The end of one tile's step, once the softmax of the next tile's scores is done: P·V
// (whose A operand is pa) waited for, O rescaled by the softmax's correction.
template <int NO, int NP>
__device__ __forceinline__ void wgmma_finish_pv(float (&o)[NO], uint32_t (&pa)[NP][4],
                                                const float (&correction)[2]) {
  wgmma_wait<0>();
  fence_registers(o);
  fence_registers(pa);  // live until here: the next P must not take its registers early
  wgmma_rescale(o, correction);
}

// pn, the next P·V's A operand, into pa.
template <int NP>
__device__ __forceinline__ void wgmma_copy_p(uint32_t (&pa)[NP][4], const uint32_t (&pn)[NP][4]) {
#pragma unroll
  for (int kk = 0; kk < NP; ++kk)
#pragma unroll
    for (int e = 0; e < 4; ++e) pa[kk][e] = pn[kk][e];
}

// The last tile's P·V (v_desc(kk): its V as B, keys 16·kk on), then the output rows.
template <class T, int DP, bool ONES, int NP, class VDesc>
__device__ __forceinline__ void wgmma_last_pv_store(float (&o)[DP / 2], uint32_t (&pa)[NP][4],
                                                    VDesc v_desc, const float (&row_sum)[2],
                                                    const AttentionParams& p, int batch, int head,
                                                    int row0, int lane) {
  fence_registers(o);
  fence_registers(pa);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < NP; ++kk) wgmma_rs<DP, T, 1>(o, pa[kk], v_desc(kk), 1);
  wgmma_commit();
  wgmma_wait<0>();
  fence_registers(o);
  wgmma_store_out<T, DP, ONES>(o, row_sum, p, batch, head, row0, lane);
}

template <class T, int DP, int WG, bool ONES>
__global__ void __launch_bounds__(WG * 128, WG == 2 && DP <= 64 ? 2 : 1)
    flash_attention_wgmma_kernel(AttentionParams p) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // wgmma needs sm_90a; attention() sends other GPUs and builds elsewhere
#elif defined(__CUDA_ARCH__)
  constexpr int kBlockN = kWgmmaBlockN, kStages = kWgmmaStages, kBlockM = WG * 64;
  constexpr int kThreads = WG * 128, kPitch = DP + 8, kTilesD = DP / 8, kStepsD = DP / 16;
  constexpr int kTilesN = kBlockN / 8, kTile = kBlockN * DP;  // elements of a K or V tile
  extern __shared__ __align__(128) unsigned char smem[];
  T* sk = reinterpret_cast<T*>(smem);  // [kStages][kTile], core-matrix layout
  T* sv = sk + kStages * kTile;        // [kStages][kTile]
  T* sq = sv + kStages * kTile;        // [kBlockM][kPitch]

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
  const int tiles = (p.sk + kBlockN - 1) / kBlockN;
  const int v_chunks = ONES ? kTilesD - 1 : kTilesD;

  if constexpr (ONES) {
    // V's last chunk in every stage: 1 in its first column, zeros after; never reloaded.
    for (int r = threadIdx.x; r < kStages * kBlockN; r += kThreads) {
      T* row = sv + (r / kBlockN) * kTile + ((r % kBlockN >> 3) * kTilesD + kTilesD - 1) * 64 +
               (r & 7) * 8;
#pragma unroll
      for (int e = 0; e < 8; ++e) row[e] = from_float<T>(e == 0 ? 1.0f : 0.0f);
    }
  }
  auto load_kv = [&](int tile) {
    const int n = tile * kBlockN, stage = tile % kStages;
    load_core_tile<T, DP, kBlockN, kThreads>(sk + stage * kTile, kg + int64_t(n) * p.kv_stride,
                                             min(kBlockN, p.sk - n), p.kv_stride, p.d, kTilesD);
    load_core_tile<T, DP, kBlockN, kThreads>(sv + stage * kTile, vg + int64_t(n) * p.kv_stride,
                                             min(kBlockN, p.sk - n), p.kv_stride, p.d, v_chunks);
  };
  const uint64_t k_base = k_descriptor(sk, kTilesD);
  const uint64_t v_base = v_descriptor(sv, kTilesD);
  auto k_desc = [&](int tile, int kk) {  // K(tile) as B = K^T, features 16·kk on
    return desc_at<T>(k_base, unsigned(tile) % kStages, kTile, core_offset(0, 2 * kk, kTilesD));
  };
  auto v_desc = [&](int tile, int kk) {  // V(tile) as B, keys 16·kk on
    return desc_at<T>(v_base, unsigned(tile) % kStages, kTile, core_offset(16 * kk, 0, kTilesD));
  };

  load_tile<T, DP, kBlockM, kThreads>(sq, qg, min(kBlockM, p.sq - m0), p.q_stride, p.d, true);
  load_kv(0);
  if (tiles > 1) load_kv(1);
  cp_async_commit();
  cp_async_wait<0>();
  fence_async_shared();
  __syncthreads();

  // This warp's 16 query rows as A fragments (the warpgroup's rows 16·(warp % 4)).
  uint32_t qf[kStepsD][4];
#pragma unroll
  for (int kk = 0; kk < kStepsD; ++kk)
    ldmatrix_x4(qf[kk],
                sq + (warp * 16 + mat_row + (mat & 1) * 8) * kPitch + kk * 16 + (mat >> 1) * 8);

  float o[kTilesD * 4];
#pragma unroll
  for (int i = 0; i < kTilesD * 4; ++i) o[i] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f}, correction[2];
  float s[kTilesN * 4];
  uint32_t pa[kBlockN / 16][4], pn[kBlockN / 16][4];

  // S(0) and its softmax.
  wgmma_fence();
  wgmma_rs_zero<kBlockN, T, 0>(s, qf[0], k_desc(0, 0));
#pragma unroll
  for (int kk = 1; kk < kStepsD; ++kk) wgmma_rs<kBlockN, T, 0>(s, qf[kk], k_desc(0, kk), 1);
  wgmma_commit();
  wgmma_wait<0>();
  fence_registers(s);
  wgmma_softmax<T, kBlockN, !ONES>(s, pa, row_max, row_sum, correction, p.sk, quad, p.scale_log2);

  // No branch around a wgmma or a wait inside the loop: ptxas serialises the wgmmas of
  // a loop where it cannot prove each accumulator read comes after its wait.
  for (int j = 0; j + 1 < tiles; ++j) {
    // Tile j + 1 is here (loaded an iteration ago) and every warpgroup is past
    // iteration j − 1, whose stage tile j + 2 takes.
    if (j > 0) {
      cp_async_wait<0>();
      fence_async_shared();
    }
    __syncthreads();
    if (j + 2 < tiles) {
      load_kv(j + 2);
      cp_async_commit();
    }
    // Every input of both groups is defined before the first is issued (ptxas
    // serialises wgmmas whose inputs are computed between them).
    uint64_t kd[kStepsD], vd[kBlockN / 16];
#pragma unroll
    for (int kk = 0; kk < kStepsD; ++kk) kd[kk] = k_desc(j + 1, kk);
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) vd[kk] = v_desc(j, kk);
    fence_registers(kd);
    fence_registers(vd);
    fence_registers(o);
    fence_registers(pa);
    wgmma_fence();
    wgmma_rs_zero<kBlockN, T, 0>(s, qf[0], kd[0]);
#pragma unroll
    for (int kk = 1; kk < kStepsD; ++kk) wgmma_rs<kBlockN, T, 0>(s, qf[kk], kd[kk], 1);
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) wgmma_rs<DP, T, 1>(o, pa[kk], vd[kk], 1);
    wgmma_commit();
    wgmma_wait<1>();  // S(j + 1); P(j)·V(j) may still run
    fence_registers(s);
    wgmma_softmax<T, kBlockN, !ONES>(s, pn, row_max, row_sum, correction, p.sk - (j + 1) * kBlockN,
                                     quad, p.scale_log2);
    wgmma_finish_pv(o, pa, correction);
    wgmma_copy_p(pa, pn);
  }
  // The last tile's P·V (its V became visible at the last iteration's barrier).
  wgmma_last_pv_store<T, DP, ONES>(
      o, pa, [&](int kk) { return v_desc(tiles - 1, kk); }, row_sum, p, batch, head, m0 + warp * 16,
      lane);
#endif
}

template <class T, int DP, int WG, bool ONES>
void launch_flash_wgmma(const AttentionParams& p, int batch, int heads) {
  constexpr int kBlockM = WG * 64;
  constexpr size_t kSmem =
      (size_t(2 * kWgmmaStages) * kWgmmaBlockN * DP + size_t(kBlockM) * (DP + 8)) * sizeof(T);
  static const bool configured = [] {
    CUDA_CHECK(cudaFuncSetAttribute(flash_attention_wgmma_kernel<T, DP, WG, ONES>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem)));
    return true;
  }();
  (void)configured;
  const dim3 grid{unsigned((p.sq + kBlockM - 1) / kBlockM), unsigned(heads), unsigned(batch)};
  flash_attention_wgmma_kernel<T, DP, WG, ONES><<<grid, WG * 128, kSmem, stream()>>>(p);
  CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------------------
// Opt-in (--flash-wgmma 1 --flash-wgmma-producer 1): the wgmma kernel above with
// FA3's structure in part. A producer warp (the block's last)
// loads K and V through a ring of kProducerStages stages with cp.async and signals
// each stage's mbarrier; the consumer warpgroups never issue loads and never meet at
// a block barrier in the loop: each waits on the stage's "full" barrier and releases
// it on its "empty" one (one thread a warpgroup). Named barriers pass a token round
// the consumer warpgroups so that they issue their GEMMs in turn (ping-pong): one's
// softmax runs under the others' GEMMs.
//
// Measured (H200, v15, per call): faster than the kernel above at head dims 64 and 80
// (SDXL 4096² × 10 heads 352 µs against 381, 1024² × 20 heads 53 against 58; SD1.5's
// d80 29 against 32), slower at 40 (250 against 205: one block a multiprocessor, where
// the kernel above fits two). cuDNN's SDPA is still faster on all of them (178, 36,
// 21, 140). What it lacks of FA3: key tiles of 128–192 (so Q·K^T runs at N = 64 here)
// with the registers for them (setmaxnreg), Q from shared memory, 128-byte swizzle, TMA.
//
// BN 128 (--flash-wgmma-keys 128, opt-in): 128-key tiles, as FA3 takes. On an H100
// (v39) SD1.5's d40 calls took 0.93 ms a step against 1.34 at BN 64, 0.88 anchored,
// and cuDNN's SDPA 0.76 in the same process (bench/cuda-notes.md item 20). A tile's
// fixed costs (the row maxima's shuffles, the corrections, O's rescale,
// the barriers and the MMAs' descriptors) are shared by twice the scores: by
// tools/py/sass_loops.py the consumers' loop at head dim 40 issues about 7.6
// instructions a score at BN 64, 5.9 at 128. The scores' registers double (s and P:
// 96 a thread), so the producer is a whole warpgroup that gives its registers to the
// consumers (setmaxnreg: kProducerRegs, kConsumerRegs) and loads with all its 128
// threads.

constexpr int kProducerStages = 4;
// Launches of the 128-key producer kernel, plain and anchored (tests: which form ran).
std::atomic<size_t> g_wgmma_k128_calls{0}, g_wgmma_anchored_calls{0}, g_wgmma_loader_calls{0};
constexpr int kProducerRegs = 56, kConsumerRegs = 224;
// The registers a thread of the 384-thread block gets at launch (__launch_bounds__(384,
// 1): 65536 / 384, in steps of 8). setmaxnreg.inc waits until the pool has what it asks
// for, so the consumers' rise must fit in what the producer gives back; if ptxas ever
// launched with fewer, the consumers would wait for ever (launch_flash_producer checks).
constexpr int kLaunchRegs = 65536 / 384 / 8 * 8;
static_assert(kProducerRegs + 2 * kConsumerRegs <= 3 * kLaunchRegs,
              "setmaxnreg: the consumers would ask for more registers than the block holds");

template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(count)
               : "memory");
}
// Returns once the barrier's phase of this parity has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, int parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
}
// An arrival from the threads where `on` holds: predicated, not branched (a branch in
// the loop makes ptxas serialise the wgmmas).
__device__ __forceinline__ void mbarrier_arrive_if(uint64_t* bar, bool on) {
  asm volatile(
      "{\n.reg .pred on;\nsetp.ne.b32 on, %1, 0;\n"
      "@on mbarrier.arrive.shared::cta.b64 _, [%0];\n}\n" ::"r"(smem_address(bar)),
      "r"(int(on))
      : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_address(bar)) : "memory");
}
// An arrival on `bar` once this thread's cp.asyncs so far have landed.
__device__ __forceinline__ void cp_async_arrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_address(bar))
               : "memory");
}
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Threads loading K and V: a warp at BN 64, a warpgroup (which setmaxnreg needs) above.
template <int BN>
__host__ __device__ constexpr int producer_threads() {
  return BN > 64 ? 128 : 32;
}

template <class T, int DP, int WG, bool ONES, int BN, bool ANCHOR, bool LOADER>
__global__ void __launch_bounds__(WG * 128 + producer_threads<BN>(), 1)
    flash_attention_producer_kernel(AttentionParams p) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();
#elif defined(__CUDA_ARCH__)
  constexpr int kBlockN = BN, kStages = kProducerStages, kBlockM = WG * 64;
  constexpr int kProducers = producer_threads<BN>(), kConsumers = WG * 128;
  constexpr int kThreads = kConsumers + kProducers;
  constexpr bool kRegs = kProducers == 128;  // registers moved by setmaxnreg
  constexpr int kPitch = DP + 8, kTilesD = DP / 8, kStepsD = DP / 16;
  constexpr int kTilesN = kBlockN / 8, kTile = kBlockN * DP;
  constexpr bool kOnes = ONES || LOADER;  // V has a ones column: P·V sums P's rows
  // V's (and O's) padded width. With LOADER every head dim has V's ones column, as
  // ONES (d = DP − 8) has in the padding chunk: at d48, d64 and d80 (d = DP) V takes
  // one chunk more than K, so that P·V sums each row of P on the tensor cores instead
  // of the softmax's 64 FADDs a tile and thread.
  constexpr int DV = attention_tile::v_width(DP, ONES, LOADER), kTilesV = DV / 8;
  constexpr int kTileV = kBlockN * DV;
  extern __shared__ __align__(128) unsigned char smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);  // [kStages], count kProducers
  uint64_t* empty = full + kStages;                    // [kStages], count WG
  const uint32_t anchor = smem_address(smem + 120);    // the ANCHOR store's word
  constexpr attention_tile::ProducerSmem kLayout{DP, DV, kStages, kBlockN, kBlockM, sizeof(T)};
  T* sk = reinterpret_cast<T*>(smem + kLayout.k());  // [kStages][kTile]
  T* sv = reinterpret_cast<T*>(smem + kLayout.v());  // [kStages][kTileV]
  T* sq = reinterpret_cast<T*>(smem + kLayout.q());  // [kBlockM][kPitch]

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
  const int tiles = (p.sk + kBlockN - 1) / kBlockN;
  const int v_chunks = ONES ? kTilesD - 1 : kTilesD;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&full[s], kProducers);
      mbarrier_init(&empty[s], WG);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  if constexpr (kOnes) {
    // V's last chunk: 1 in its first column. With LOADER and ONES K's last chunk (past
    // d) is zeros here too, and neither is ever loaded.
    for (int r = threadIdx.x; r < kStages * kBlockN; r += kThreads) {
      const int stage = r / kBlockN, row = r % kBlockN;
      const int at_v = stage * kTileV + core_offset(row, kTilesV - 1, kTilesV);
      const int at_k = stage * kTile + core_offset(row, kTilesD - 1, kTilesD);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        sv[at_v + e] = from_float<T>(e == 0 ? 1.0f : 0.0f);
        if constexpr (ONES && LOADER) sk[at_k + e] = from_float<T>(0.0f);
      }
    }
  }
  if constexpr (!LOADER) {
    load_tile<T, DP, kBlockM, kThreads>(sq, qg, min(kBlockM, p.sq - m0), p.q_stride, p.d, true);
    cp_async_commit();
    cp_async_wait<0>();
  }
  fence_async_shared();  // the constant chunks, for the tensor cores
  // The last block-wide barrier: the roles part here. With LOADER the consumers load Q
  // after it, while the producer loads the first K and V tiles, so that the two loads'
  // latencies overlap instead of following each other.
  __syncthreads();

  if (warp >= WG * 4) {
    if constexpr (kRegs) setmaxnreg_dec<kProducerRegs>();
    // The producer: tile t into stage t % kStages once the consumers released its
    // previous tile (t − kStages), then an arrival when this thread's copies land.
    const int pt = threadIdx.x - kConsumers;
    // Any tile, the last partial one included: about 25 instructions a 16-byte copy
    // (the divisions by the chunk count, the guards), 250-300 a tile for each producer
    // thread at head dim 40 (tools/py/sass_loops.py).
    auto load_any = [&](int t) {
      const int stage = t % kStages, n = t * kBlockN, valid = min(kBlockN, p.sk - n);
      for (int i = pt; i < kBlockN * kTilesD; i += kProducers) {
        const auto [r, c] = item(i, kTilesD);
        const int at = core_offset(r, c, kTilesD), at_v = core_offset(r, c, kTilesV);
        const bool ok = r < valid && c * 8 < p.d;
        const int64_t g = int64_t(n + r) * p.kv_stride + c * 8;
        cp_async_16(sk + stage * kTile + at, ok ? kg + g : kg, ok ? 16 : 0);
        if (c < v_chunks) cp_async_16(sv + stage * kTileV + at_v, ok ? vg + g : vg, ok ? 16 : 0);
      }
    };
    if constexpr (!LOADER) {
      for (int t = 0; t < tiles; ++t) {
        if (t >= kStages) mbarrier_wait(&empty[t % kStages], (t / kStages - 1) & 1);
        load_any(t);
        cp_async_arrive(&full[t % kStages]);
      }
      return;
    }
    // LOADER (--flash-wgmma-loader 1). A full tile's copies are the same for every tile
    // but for the tile's first row and its stage, so each thread works out its share
    // once: item k is key row r and real feature chunk c (ONES's padding chunk of K
    // and V was filled above), `at` in the stage and `off` from the tile's first row.
    // A full tile then costs an add or two a copy. The first tiles' copies start as the
    // roles part, beside the consumers' copies of Q (see the block barrier above).
    //
    // And the fence that makes the copies visible to the tensor cores (the async
    // proxy) is the producer's: each thread waits for its copies of a tile, fences
    // them and arrives on the stage's "full" barrier (the barrier's release and the
    // consumers' acquire carry the fence's order to their MMAs). The consumers then
    // wait without a fence of their own, which was a MEMBAR.ALL.CTA and a
    // FENCE.VIEW.ASYNC.S a tile in every consumer warp, ahead of its MMAs.
    constexpr int kReal = ONES ? kTilesD - 1 : kTilesD;  // chunks a row loads
    constexpr int kItems = kBlockN * kReal / kProducers;
    static_assert(kBlockN * kReal % kProducers == 0, "a tile's copies split evenly");
    constexpr uint32_t kStageBytes = kLayout.k_stage(), kStageBytesV = kLayout.v_stage();
    constexpr uint32_t kVBytes = kLayout.v() - kLayout.k();  // from sk to sv
    // Shared addresses in stage 0 (V's, where its layout differs from K's) and bytes
    // from the tile's first row.
    uint32_t at[kItems], at_v[DV == DP ? 1 : kItems], off[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const auto [r, c] = item(pt + k * kProducers, kReal);
      at[k] = smem_address(sk + core_offset(r, c, kTilesD));
      if constexpr (DV != DP) at_v[k] = smem_address(sv + core_offset(r, c, kTilesV));
      off[k] = uint32_t((r * p.kv_stride + c * 8) * int(sizeof(T)));
    }
    // Every real chunk of a row is in the tensor (d is DP, or DP − 8 with ONES, as
    // the dispatch pads) and a tile's offsets fit an int; else every tile goes the
    // general way.
    const bool exact = p.d == kReal * 8 && p.kv_stride <= (1 << 22);
    for (int t = 0; t < tiles; ++t) {
      const int stage = t % kStages, n = t * kBlockN;
      if (t > 0) {  // tile t − 1, issued last iteration: landed, fenced, published
        cp_async_wait<0>();
        fence_async_shared();
        mbarrier_arrive(&full[(t - 1) % kStages]);
      }
      if (t >= kStages) mbarrier_wait(&empty[stage], (t / kStages - 1) & 1);
      if (exact && n + kBlockN <= p.sk) {
        const char* kt = reinterpret_cast<const char*>(kg + int64_t(n) * p.kv_stride);
        const char* vt = reinterpret_cast<const char*>(vg + int64_t(n) * p.kv_stride);
        const uint32_t s0 = stage * kStageBytes, s0_v = stage * kStageBytesV;
#pragma unroll
        for (int k = 0; k < kItems; ++k) {
          cp_async_16_full(at[k] + s0, kt + off[k]);
          uint32_t v_at;
          if constexpr (DV == DP)
            v_at = at[k] + kVBytes;  // the same place in V's layout
          else
            v_at = at_v[k];
          cp_async_16_full(v_at + s0_v, vt + off[k]);
        }
      } else {
        load_any(t);
      }
      cp_async_commit();
    }
    if (tiles > 0) {
      cp_async_wait<0>();
      fence_async_shared();
      mbarrier_arrive(&full[(tiles - 1) % kStages]);
    }
    return;
  }
  if constexpr (kRegs) setmaxnreg_inc<kConsumerRegs>();
  if constexpr (LOADER) {
    load_tile<T, DP, kBlockM, kConsumers>(sq, qg, min(kBlockM, p.sq - m0), p.q_stride, p.d, true);
    cp_async_commit();
    cp_async_wait<0>();
    named_barrier_sync(1 + WG, kConsumers);  // all of Q is in (ids 1 to WG are the ping-pong's)
  }

  const int wg = warp / 4;
  const bool leader = threadIdx.x % 128 == 0;
  const uint64_t k_base = k_descriptor(sk, kTilesD);
  const uint64_t v_base = v_descriptor(sv, kTilesV);
  auto k_desc = [&](int tile, int kk) {  // K(tile) as B = K^T, features 16·kk on
    return desc_at<T>(k_base, unsigned(tile) % kStages, kTile, core_offset(0, 2 * kk, kTilesD));
  };
  auto v_desc = [&](int tile, int kk) {  // V(tile) as B, keys 16·kk on
    return desc_at<T>(v_base, unsigned(tile) % kStages, kTileV, core_offset(16 * kk, 0, kTilesV));
  };
  auto wait_full = [&](int tile) {
    mbarrier_wait(&full[tile % kStages], (tile / kStages) & 1);
    if constexpr (!LOADER) fence_async_shared();  // else the producer fenced its copies
  };

  uint32_t qf[kStepsD][4];
#pragma unroll
  for (int kk = 0; kk < kStepsD; ++kk)
    ldmatrix_x4(qf[kk],
                sq + (warp * 16 + mat_row + (mat & 1) * 8) * kPitch + kk * 16 + (mat >> 1) * 8);

  float o[kTilesV * 4];
#pragma unroll
  for (int i = 0; i < kTilesV * 4; ++i) o[i] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f}, correction[2];
  float s[kTilesN * 4];
  uint32_t pa[kBlockN / 16][4], pn[kBlockN / 16][4];

  wait_full(0);
  wgmma_fence();
  wgmma_rs_zero<kBlockN, T, 0>(s, qf[0], k_desc(0, 0));
#pragma unroll
  for (int kk = 1; kk < kStepsD; ++kk) wgmma_rs<kBlockN, T, 0>(s, qf[kk], k_desc(0, kk), 1);
  wgmma_commit();
  wgmma_wait<0>();
  fence_registers(s);
  // The producer kernel's consumers have the registers for four chains of the maxima.
  constexpr int kChains = LOADER ? 4 : 1;
  wgmma_softmax<T, kBlockN, !kOnes, kChains>(s, pa, row_max, row_sum, correction, p.sk, quad,
                                             p.scale_log2);

  // The first warpgroup holds the token first (its own barrier, half arrived).
  constexpr int kPair = 256;  // a named barrier's threads: the waiting warpgroup and the one before
  if (WG > 1 && wg == 0) named_barrier_arrive(1, kPair);
  // One tile's step: P(j)·V(j) from cur, the softmax of S(j + 1) into nxt, O rescaled.
  //
  // ptxas moves the wait for P·V (WARPGROUP.DEPBAR.LE gsb0, 0x0) up, ahead of the
  // softmax's exponentials (sass_loops.py, v38), so that the softmax never runs under
  // its warpgroup's own P·V. It does not move it above a store to shared memory: with
  // ANCHOR, `mix` (a word that depends on every exponential) is stored first, to one
  // word that all threads write and none reads, and the SASS has every exponential
  // between the two waits. The price: the XORs at d40 (half an instruction a score),
  // and pn may no longer share registers with the running P·V's pa, so the loop takes
  // two tiles an iteration with P alternating between them instead of copying.
  auto step = [&](int j, uint32_t(&cur)[kBlockN / 16][4], uint32_t(&nxt)[kBlockN / 16][4]) {
    if (j > 0) mbarrier_arrive_if(&empty[(j - 1) % kStages], leader);
    wait_full(j + 1);
    uint64_t kd[kStepsD], vd[kBlockN / 16];
#pragma unroll
    for (int kk = 0; kk < kStepsD; ++kk) kd[kk] = k_desc(j + 1, kk);
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) vd[kk] = v_desc(j, kk);
    fence_registers(kd);
    fence_registers(vd);
    fence_registers(o);
    fence_registers(cur);
    if (WG > 1) named_barrier_sync(1 + wg, kPair);
    wgmma_fence();
    wgmma_rs_zero<kBlockN, T, 0>(s, qf[0], kd[0]);
#pragma unroll
    for (int kk = 1; kk < kStepsD; ++kk) wgmma_rs<kBlockN, T, 0>(s, qf[kk], kd[kk], 1);
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) wgmma_rs<DV, T, 1>(o, cur[kk], vd[kk], 1);
    wgmma_commit();
    if (WG > 1) named_barrier_arrive(1 + (wg + 1) % WG, kPair);
    wgmma_wait<1>();
    fence_registers(s);
    uint32_t mix = 0;
    wgmma_softmax<T, kBlockN, !kOnes, kChains>(s, nxt, row_max, row_sum, correction,
                                               p.sk - (j + 1) * kBlockN, quad, p.scale_log2,
                                               ANCHOR ? &mix : nullptr);
    if constexpr (ANCHOR)
      asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(anchor), "r"(mix) : "memory");
    wgmma_finish_pv(o, cur, correction);
  };
  auto v_last = [&](int kk) { return v_desc(tiles - 1, kk); };
  if constexpr (ANCHOR) {
    // Two tiles an iteration, P alternating between pa and pn: the softmax writes
    // registers no running MMA reads, so ptxas need not copy pn into pa.
    int j = 0;
    for (; j + 2 < tiles; j += 2) {
      step(j, pa, pn);
      step(j + 1, pn, pa);
    }
    if (j + 1 < tiles) {
      step(j, pa, pn);
      wgmma_last_pv_store<T, DV, kOnes>(o, pn, v_last, row_sum, p, batch, head, m0 + warp * 16,
                                        lane);
      return;
    }
  } else {
    for (int j = 0; j + 1 < tiles; ++j) {
      step(j, pa, pn);
      wgmma_copy_p(pa, pn);
    }
  }
  wgmma_last_pv_store<T, DV, kOnes>(o, pa, v_last, row_sum, p, batch, head, m0 + warp * 16, lane);
#endif
}

template <class T, int DP, int WG, bool ONES, int BN, bool ANCHOR = false, bool LOADER = false>
void launch_flash_producer(const AttentionParams& p, int batch, int heads) {
  constexpr int kBlockM = WG * 64;
  constexpr int DV = attention_tile::v_width(DP, ONES, LOADER);
  constexpr size_t kSmem =
      attention_tile::ProducerSmem{DP, DV, kProducerStages, BN, kBlockM, sizeof(T)}.end();
  static const bool configured = [] {
    const auto kernel = flash_attention_producer_kernel<T, DP, WG, ONES, BN, ANCHOR, LOADER>;
    CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem)));
    if constexpr (producer_threads<BN>() == 128) {
      cudaFuncAttributes attributes{};
      CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
      if (kProducerRegs + 2 * kConsumerRegs > 3 * attributes.numRegs)
        throw Error(str("attention: the 128-key producer kernel was built with ",
                        attributes.numRegs, " registers a thread; its setmaxnreg split (",
                        kProducerRegs, " + 2 x ", kConsumerRegs, ") needs ", kLaunchRegs));
    }
    return true;
  }();
  (void)configured;
  const dim3 grid{unsigned((p.sq + kBlockM - 1) / kBlockM), unsigned(heads), unsigned(batch)};
  flash_attention_producer_kernel<T, DP, WG, ONES, BN, ANCHOR, LOADER>
      <<<grid, WG * 128 + producer_threads<BN>(), kSmem, stream()>>>(p);
  CUDA_CHECK_LAUNCH();
  if constexpr (BN == 128) ++(ANCHOR ? g_wgmma_anchored_calls : g_wgmma_k128_calls);
  if constexpr (LOADER) ++g_wgmma_loader_calls;
}

std::atomic<size_t> g_wgmma_calls{0};

template <class T, int DP>
void launch_flash_wgmma_rows(const AttentionParams& p, int batch, int heads) {
  // 192 rows a block (three warpgroups) read K and V once for more query rows than
  // 128 (two), but take a whole multiprocessor, where two 128-row blocks share one at
  // head dims up to 64. Measured on an H200 (v14): head dim 64 faster with 192 (SDXL
  // 1024² 59 against 68 µs a call; 4096² level), 40 and 80 with 128 (SD1.5 4096², d40:
  // 206 against 264 µs).
  int rows = options().flash_wgmma_rows;
  if (rows == 0) rows = DP == 64 ? 192 : 128;
  const bool ones = p.d == DP - 8;
  if (options().flash_wgmma_producer) {
    if (options().flash_wgmma_keys == 128) {  // two consumer warpgroups (registers)
      if (options().flash_wgmma_anchor) {
        if (options().flash_wgmma_loader) {
          if (ones) return launch_flash_producer<T, DP, 2, true, 128, true, true>(p, batch, heads);
          return launch_flash_producer<T, DP, 2, false, 128, true, true>(p, batch, heads);
        }
        if (ones) return launch_flash_producer<T, DP, 2, true, 128, true>(p, batch, heads);
        return launch_flash_producer<T, DP, 2, false, 128, true>(p, batch, heads);
      }
      if (ones) return launch_flash_producer<T, DP, 2, true, 128>(p, batch, heads);
      return launch_flash_producer<T, DP, 2, false, 128>(p, batch, heads);
    }
    if constexpr (DP <= 64) {  // three warpgroups and a warp at head dim 80 spill
      if (rows == 192) {
        if (ones) return launch_flash_producer<T, DP, 3, true, 64>(p, batch, heads);
        return launch_flash_producer<T, DP, 3, false, 64>(p, batch, heads);
      }
    }
    if (ones) return launch_flash_producer<T, DP, 2, true, 64>(p, batch, heads);
    return launch_flash_producer<T, DP, 2, false, 64>(p, batch, heads);
  }
  if (rows == 192) {
    if (ones) return launch_flash_wgmma<T, DP, 3, true>(p, batch, heads);
    return launch_flash_wgmma<T, DP, 3, false>(p, batch, heads);
  }
  if (ones) return launch_flash_wgmma<T, DP, 2, true>(p, batch, heads);
  return launch_flash_wgmma<T, DP, 2, false>(p, batch, heads);
}

}  // namespace

// The wgmma kernel where it applies (Hopper, no causal mask, 16-byte rows, padded
// head dim 48, 64 or 80); false otherwise.
template <class T>
bool flash_wgmma(const AttentionParams& p, int batch, int heads, int dp) {
  if (!options().flash_wgmma || !flash_wgmma_available() || p.causal || !p.vec) return false;
  switch (dp) {
    case 48:
      launch_flash_wgmma_rows<T, 48>(p, batch, heads);
      break;
    case 64:
      launch_flash_wgmma_rows<T, 64>(p, batch, heads);
      break;
    case 80:
      launch_flash_wgmma_rows<T, 80>(p, batch, heads);
      break;
    default:
      return false;
  }
  ++g_wgmma_calls;
  return true;
}

template bool flash_wgmma<half>(const AttentionParams&, int, int, int);
template bool flash_wgmma<bfloat16>(const AttentionParams&, int, int, int);

// The wgmma kernel is compiled for sm_90a only (KILN_CUDA_SM90A, from CMake's
// architecture list) and runs on compute 9.0.
bool flash_wgmma_available() {
#if defined(KILN_CUDA_SM90A)
  static const bool ok = device_info().compute_major == 9 && device_info().compute_minor == 0;
  return ok;
#else
  return false;
#endif
}

size_t flash_wgmma_calls() {
  return g_wgmma_calls.load();
}

size_t flash_wgmma_k128_calls(bool anchored) {
  return anchored ? g_wgmma_anchored_calls.load() : g_wgmma_k128_calls.load();
}

size_t flash_wgmma_loader_calls() {
  return g_wgmma_loader_calls.load();
}

}  // namespace kiln::cuda
