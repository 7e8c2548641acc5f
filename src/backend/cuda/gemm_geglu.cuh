// The feed-forward's gated projection in one GEMM: out = hidden * gelu(gate) applied in
// the epilogue, so the [M, 2N] product never goes through memory and the GEGLU pass is
// gone (ops::linear_geglu; SDXL: 70 calls a step, the GEGLU pass alone 1.7 ms on an
// H200, v16).
//
// The GEMM is CUTLASS's Hopper kernel (TMA loads, a producer warp, wgmma consumers;
// ping-pong or cooperative, bench/cuda-notes.md v17 timed them beside cuBLAS), built
// only where CMake found CUTLASS's headers (KILN_WITH_CUTLASS; the pinned
// nvidia-cutlass wheel). Its epilogue is ours (GegluEpilogue): the weight's rows
// alternate kGegluBlock (8) hidden and 8 gate rows, and a wgmma accumulator gives
// each thread pairs of adjacent columns in groups of 8, group g + 1 eight columns to
// the right of group g. So a thread holds the hidden value of its column and, one
// group on, the gate of the same column: it adds the biases and applies the gate in
// f32; a transpose within each quad of threads then gives each thread eight adjacent
// outputs to store as one 16-byte word.
//
// This header is the kernels; each gemm_geglu_<type>_<form>.cu instantiates one, so that
// the four build side by side (in one file they took 55-59 s, the longest of the build;
// one alone takes 32 s, most of it nvcc's device front end), and gemm_geglu.cu chooses
// the form per shape.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "backend/cuda/context.h"
#include "backend/cuda/device.cuh"
#include "backend/cuda/ops.h"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/detail.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"
#include "ops/ops.h"

namespace kiln::cuda {
namespace geglu_detail {

static_assert(ops::kGegluBlock == 8, "GegluEpilogue pairs accumulator groups of 8 columns");

__device__ __forceinline__ float gelu_erf(float x) {
  return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

template <class Element>
struct Pair;  // two adjacent outputs as one 32-bit word
template <>
struct Pair<cutlass::half_t> {
  using type = __half2;
  static __device__ __forceinline__ __half2 make(float a, float b) {
    return __floats2half2_rn(a, b);
  }
  static __device__ __forceinline__ float2 to_float2(__half2 v) { return __half22float2(v); }
};
template <>
struct Pair<cutlass::bfloat16_t> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ __nv_bfloat162 make(float a, float b) {
    return __floats2bfloat162_rn(a, b);
  }
  static __device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) {
    return __bfloat1622float2(v);
  }
};

// A collective epilogue with the interface of CUTLASS's register-to-global epilogues
// (run through detail::Sm90TmaWarpSpecializedAdapter, as CUTLASS's own builder does for
// the no-shared-memory schedule). Problem N is the weight's 2N rows; out is [M, N].
// Stores are 16 bytes a thread, after a transpose within each quad of threads (out
// 16-byte aligned, ld_out a multiple of 8): against one 32-bit store a thread per
// column pair, SDXL's 60 calls of 2048x10240x1280 took 5.37 ms a step instead of 5.62
// (H200, bench/results/2026-12-04-h200-v18).
template <class Element>
class GegluEpilogue {
 public:
  using EpilogueSchedule = cutlass::epilogue::NoSmemWarpSpecialized;
  using DispatchPolicy = EpilogueSchedule;
  using ElementC = Element;  // no source operand is read; CUTLASS's adapter wants a type
  using ElementD = Element;
  using ElementAccumulator = float;
  struct ThreadEpilogueOp {  // the types CUTLASS's device adapter asks the epilogue for
    using ElementOutput = Element;
    using ElementAccumulator = float;
    using ElementCompute = float;
  };
  using StrideC = cute::Stride<int64_t, cute::Int<1>, int64_t>;
  using StrideD = StrideC;
  using GmemTiledCopyC = void;
  using GmemTiledCopyD = void;

  struct SharedStorage {};
  using TensorStorage = SharedStorage;

  struct Arguments {
    const Element* bias = nullptr;  // [2N], interleaved like the weight, or null
    Element* out = nullptr;         // [M, N]
    int64_t ld_out = 0;             // elements
  };
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args,
                                                  void*) {
    return args;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*,
                                              cudaStream_t, cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }
  template <class ProblemShape>
  static bool can_implement(ProblemShape const& problem, Arguments const& args) {
    const auto n = cute::get<1>(problem);
    return args.out != nullptr && n % 16 == 0 && args.ld_out % 8 == 0 &&
           reinterpret_cast<uintptr_t>(args.out) % 16 == 0 && args.ld_out >= n / 2;
  }

  CUTLASS_HOST_DEVICE
  GegluEpilogue(Params const& params, SharedStorage const& = SharedStorage()) : params_(params) {}

  CUTLASS_DEVICE bool is_source_needed() { return false; }

  template <class ProblemShapeMNKL, class BlockShapeMNK, class BlockCoordMNKL, class FrgEngine,
            class FrgLayout, class TiledMma, class ResidueMNK>
  CUTLASS_DEVICE void operator()(ProblemShapeMNKL problem_shape_mnkl, BlockShapeMNK blk_shape_mnk,
                                 BlockCoordMNKL blk_coord_mnkl,
                                 cute::Tensor<FrgEngine, FrgLayout> const& acc, TiledMma tiled_mma,
                                 ResidueMNK, int thread_idx, char*) {
    using namespace cute;
    // The wgmma accumulator's values: (2 adjacent columns, 2 rows 8 apart, N/8 groups of
    // 8 columns), then the MMA's repeats along M and N.
    static_assert(rank<0>(FrgLayout{}) == 3, "wgmma accumulator layout expected");
    static_assert(size<0, 0>(FrgLayout{}) == 2 && size<0, 1>(FrgLayout{}) == 2,
                  "wgmma accumulator layout expected");
    static_assert(size<0, 2>(FrgLayout{}) % 2 == 0, "column groups come in hidden/gate pairs");
    const int m_total = int(get<0>(problem_shape_mnkl));
    const int n_total = int(get<1>(problem_shape_mnkl));
    auto [m_coord, n_coord, k_coord, l_coord] = blk_coord_mnkl;
    // Each accumulator's (row, column) in the product.
    auto tile = local_tile(make_identity_tensor(make_shape(m_total, n_total)),
                           take<0, 2>(blk_shape_mnk), make_coord(m_coord, n_coord));
    auto tc = tiled_mma.get_thread_slice(thread_idx).partition_C(tile);
    using P = Pair<Element>;
    using Bias = typename P::type;
    constexpr int kGroups = decltype(size<0, 2>(FrgLayout{}))::value;  // of 8 columns
    constexpr int kN = decltype(size<2>(FrgLayout{}))::value;
    // The biases first, all of them (they depend on the column only): a load after a
    // store cannot be moved above it (out might alias bias, for all the compiler knows),
    // so loads among the stores would each wait out the memory's latency in turn.
    Bias hidden_bias[kN][kGroups / 2], gate_bias[kN][kGroups / 2];
    CUTLASS_PRAGMA_UNROLL
    for (int ni = 0; ni < kN; ++ni) {
      CUTLASS_PRAGMA_UNROLL
      for (int g = 0; g < kGroups; g += 2) {
        const int col = get<1>(tc(make_coord(make_coord(0, 0, g), 0, ni)));
        const bool load = params_.bias != nullptr && col < n_total;
        hidden_bias[ni][g / 2] =
            load ? *reinterpret_cast<const Bias*>(params_.bias + col) : P::make(0.0f, 0.0f);
        gate_bias[ni][g / 2] =
            load ? *reinterpret_cast<const Bias*>(params_.bias + col + 8) : P::make(0.0f, 0.0f);
      }
    }
    auto output = [&](int mi, int ni, int r, int g) {  // g even: a hidden group
      const float2 hb = P::to_float2(hidden_bias[ni][g / 2]);
      const float2 gb = P::to_float2(gate_bias[ni][g / 2]);
      const float h0 = acc(make_coord(make_coord(0, r, g), mi, ni)) + hb.x;
      const float h1 = acc(make_coord(make_coord(1, r, g), mi, ni)) + hb.y;
      const float g0 = acc(make_coord(make_coord(0, r, g + 1), mi, ni)) + gb.x;
      const float g1 = acc(make_coord(make_coord(1, r, g + 1), mi, ni)) + gb.y;
      return P::make(h0 * gelu_erf(g0), h1 * gelu_erf(g1));
    };
    // Four threads (a quad, lanes differing in their low two bits) hold the same
    // rows; thread q has columns 2q and 2q + 1 of every group. Per row, eight groups
    // (four hidden/gate pairs) make 32 output columns: each thread's 32-bit words
    // go through a 4x4 transpose within the quad, after which thread q holds all
    // eight outputs of pair q and stores them as one 16-byte word, and the quad
    // writes 64 contiguous bytes instead of four times 16.
    static_assert(kGroups % 8 == 0, "the stores take eight column groups at a time");
    const int q = (get<1>(tc(make_coord(make_coord(0, 0, 0), 0, 0))) & 7) >> 1;
    auto pick = [](const uint32_t(&w)[4], int i) {
      return i == 0 ? w[0] : i == 1 ? w[1] : i == 2 ? w[2] : w[3];
    };
    CUTLASS_PRAGMA_UNROLL
    for (int mi = 0; mi < size<1>(acc); ++mi) {
      CUTLASS_PRAGMA_UNROLL
      for (int ni = 0; ni < kN; ++ni) {
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < 2; ++r) {
          CUTLASS_PRAGMA_UNROLL
          for (int b = 0; b < kGroups; b += 8) {
            uint32_t w[4];  // w[s]: pair s's two outputs at this thread's columns
            CUTLASS_PRAGMA_UNROLL
            for (int s = 0; s < 4; ++s) {
              const Bias v = output(mi, ni, r, b + 2 * s);
              w[s] = *reinterpret_cast<const uint32_t*>(&v);
            }
            // got[i]: from lane q ^ i, its words of pair q (i = 0: this thread's own).
            const uint32_t got[4] = {pick(w, q), __shfl_xor_sync(0xffffffffu, pick(w, q ^ 1), 1),
                                     __shfl_xor_sync(0xffffffffu, pick(w, q ^ 2), 2),
                                     __shfl_xor_sync(0xffffffffu, pick(w, q ^ 3), 3)};
            // Position j of pair q came from lane j, i.e. got[q ^ j].
            const uint4 v{pick(got, q), pick(got, q ^ 1), pick(got, q ^ 2), pick(got, q ^ 3)};
            const auto rc = tc(make_coord(make_coord(0, r, b + 2 * q), mi, ni));
            const int row = get<0>(rc), col = get<1>(rc) - 2 * q;  // pair q's first column
            if (row >= m_total || col >= n_total) continue;
            const int out_col = (col >> 4) * 8;
            *reinterpret_cast<uint4*>(params_.out + int64_t(row) * params_.ld_out + out_col) = v;
          }
        }
      }
    }
  }

 private:
  Params params_;
};

template <class Element_, class Tile, class Cluster, class Schedule>
struct GegluGemm {
  using Element = Element_;
  using Epilogue =
      cutlass::epilogue::collective::detail::Sm90TmaWarpSpecializedAdapter<GegluEpilogue<Element>>;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, cutlass::layout::RowMajor, 8,
      Element, cutlass::layout::ColumnMajor, 8, float, Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename Epilogue::SharedStorage))>,
      Schedule>::CollectiveOp;
  using Kernel =
      cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

// The two forms the probe found closest to cuBLAS on the UNets' GEGLU shapes (v17,
// call 1): ping-pong 64x256 on 2048x10240x1280 (78.6 µs, cuBLAS 79.1), cooperative
// 128x256 in clusters of two on 8192x5120x640 (90.0, cuBLAS 85.5).
template <class E>
using PingPong = GegluGemm<E, cute::Shape<cute::_64, cute::_256, cute::_64>,
                           cute::Shape<cute::_1, cute::_1, cute::_1>,
                           cutlass::gemm::KernelTmaWarpSpecializedPingpong>;
template <class E>
using Cooperative = GegluGemm<E, cute::Shape<cute::_128, cute::_256, cute::_64>,
                              cute::Shape<cute::_2, cute::_1, cute::_1>,
                              cutlass::gemm::KernelTmaWarpSpecializedCooperative>;

// Sets up and launches form G on `a`; false where CUTLASS cannot run these operands.
template <class G>
bool launch(const LinearGegluArgs& a) {
  using Gemm = typename G::Gemm;
  using Kernel = typename Gemm::GemmKernel;
  using E = typename G::Element;
  const int m = int(a.x.dim(0)), n2 = int(a.weight.dim(0)), k = int(a.x.dim(1));
  const auto stride_a = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, {m, k, 1});
  const auto stride_b = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, {n2, k, 1});
  cutlass::KernelHardwareInfo hw;
  hw.device_id = context().device;
  hw.sm_count = context().props.multiProcessorCount;
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {m, n2, k, 1},
      {static_cast<const E*>(a.x.raw()), stride_a, static_cast<const E*>(a.weight.raw()), stride_b},
      {a.bias.defined() ? static_cast<const E*>(a.bias.raw()) : nullptr,
       static_cast<E*>(a.out.raw()), a.out.dim(1)},
      hw};
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return false;
  if (Gemm::get_workspace_size(args) != 0) return false;  // none for these schedules
  if (gemm.initialize(args, nullptr, stream()) != cutlass::Status::kSuccess) return false;
  const cutlass::Status s = gemm.run(stream());
  CUDA_CHECK_LAUNCH();
  return s == cutlass::Status::kSuccess;
}

}  // namespace geglu_detail

template <DType T, bool kCooperative>
bool geglu_gemm(const LinearGegluArgs& a) {
  using E = std::conditional_t<T == DType::F16, cutlass::half_t, cutlass::bfloat16_t>;
  using G =
      std::conditional_t<kCooperative, geglu_detail::Cooperative<E>, geglu_detail::PingPong<E>>;
  return geglu_detail::launch<G>(a);
}

}  // namespace kiln::cuda
