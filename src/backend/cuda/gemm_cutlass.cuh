// Plain GEMMs (bias and residual, no activation) on CUTLASS's Hopper kernels, with tiles
// that fit the GPU's waves where cuBLASLt's leave multiprocessors idle: SDXL's 2048x1280
// outputs and SD1.5's 8192x320 make 160 or 192 tiles of 128x128 (two waves on 132
// multiprocessors, the second part-empty) or 80 of 256x128, and 128 of 128x160 (one
// wave). With Options::gemm_cutlass Auto, gemm.cpp times these forms beside cuBLASLt's
// plan on each shape's first call and keeps the faster (bench/results/2026-12-05-v24
// has the probe and the A/B that decide the default).
//
// The epilogue is CUTLASS's own (TMA stores; D = acc + bias[col] + C, C the residual or
// skipped), so the output is as cuBLASLt's: f32 accumulation, one rounding.
//
// This header is the kernels; each gemm_cutlass_<type>_<form>.cu instantiates one, so
// that they build side by side (gemm_geglu.cuh says why).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "backend/cuda/context.h"
#include "backend/cuda/ops.h"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/util/packed_stride.hpp"

namespace kiln::cuda {
namespace cutlass_gemm_detail {

// kiln's layout: C[M, N] = A[M, K] · B[N, K]^T, all row-major: A is K-major (RowMajor
// M × K), B K-major too (ColumnMajor K × N), C and D row-major.
template <class Element_, class Tile, class Cluster, class Schedule, class EpilogueSchedule,
          class Scheduler = void>
struct PlainGemm {
  using Element = Element_;
  using Fusion = cutlass::epilogue::fusion::LinCombPerColBias<Element, float, Element, Element>;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, Element,
      cutlass::layout::RowMajor, 8, Element, cutlass::layout::RowMajor, 8, EpilogueSchedule,
      Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, cutlass::layout::RowMajor, 8,
      Element, cutlass::layout::ColumnMajor, 8, float, Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename Epilogue::SharedStorage))>,
      Schedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop,
                                                      Epilogue, Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

template <class E>
using Coop128x160 = PlainGemm<E, cute::Shape<cute::_128, cute::_160, cute::_64>,
                              cute::Shape<cute::_1, cute::_1, cute::_1>,
                              cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                              cutlass::epilogue::TmaWarpSpecializedCooperative>;
template <class E>
using Ping64x160 = PlainGemm<
    E, cute::Shape<cute::_64, cute::_160, cute::_64>, cute::Shape<cute::_1, cute::_1, cute::_1>,
    cutlass::gemm::KernelTmaWarpSpecializedPingpong, cutlass::epilogue::TmaWarpSpecialized>;
template <class E>
using StreamK128x128 =
    PlainGemm<E, cute::Shape<cute::_128, cute::_128, cute::_64>,
              cute::Shape<cute::_1, cute::_1, cute::_1>,
              cutlass::gemm::KernelTmaWarpSpecializedCooperative,
              cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler>;

// Sets up and launches G on `p` (gemm.cpp has checked the layout: contiguous rows,
// 16-byte aligned operands, no activation); false where CUTLASS cannot run it, or
// where it would need more workspace than the context holds.
template <class G>
bool launch(const GemmParams& p) {
  using Gemm = typename G::Gemm;
  using Kernel = typename Gemm::GemmKernel;
  using E = typename G::Element;
  const int m = int(p.m), n = int(p.n), k = int(p.k);
  const auto stride_a = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, {m, k, 1});
  const auto stride_b = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, {n, k, 1});
  const auto stride_c = cutlass::make_cute_packed_stride(typename Kernel::StrideC{}, {m, n, 1});
  const auto stride_d = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, {m, n, 1});
  Context& c = context();
  cutlass::KernelHardwareInfo hw;
  hw.device_id = c.device;
  hw.sm_count = c.props.multiProcessorCount;
  // Without a residual C is not read (beta 0); it still needs an address for its
  // tensor map, so it names the output.
  const E* source = static_cast<const E*>(p.residual ? p.residual : p.c);
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {m, n, k, 1},
      {static_cast<const E*>(p.a), stride_a, static_cast<const E*>(p.b), stride_b},
      {{}, source, stride_c, static_cast<E*>(p.c), stride_d},
      hw};
  args.epilogue.thread.alpha = 1.0f;
  args.epilogue.thread.beta = p.residual ? 1.0f : 0.0f;
  args.epilogue.thread.bias_ptr = static_cast<const E*>(p.bias);
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return false;
  const size_t workspace = Gemm::get_workspace_size(args);
  if (workspace > c.gemm_workspace_bytes) return false;
  if (gemm.initialize(args, workspace ? c.gemm_workspace : nullptr, c.stream) !=
      cutlass::Status::kSuccess)
    return false;
  const cutlass::Status s = gemm.run(c.stream);
  CUDA_CHECK_LAUNCH();
  return s == cutlass::Status::kSuccess;
}

}  // namespace cutlass_gemm_detail

template <DType T, CutlassGemmForm F>
bool cutlass_gemm(const GemmParams& p) {
  using E = std::conditional_t<T == DType::F16, cutlass::half_t, cutlass::bfloat16_t>;
  namespace d = cutlass_gemm_detail;
  if constexpr (F == CutlassGemmForm::Coop128x160)
    return d::launch<d::Coop128x160<E>>(p);
  else if constexpr (F == CutlassGemmForm::Ping64x160)
    return d::launch<d::Ping64x160<E>>(p);
  else
    return d::launch<d::StreamK128x128<E>>(p);
}

}  // namespace kiln::cuda
