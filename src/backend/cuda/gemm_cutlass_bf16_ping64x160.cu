// A plain CUTLASS GEMM for bf16, ping64x160 (gemm_cutlass.cuh says why a file each).
#include "backend/cuda/gemm_cutlass.cuh"

namespace kiln::cuda {
template bool cutlass_gemm<DType::BF16, CutlassGemmForm::Ping64x160>(const GemmParams& p);
}  // namespace kiln::cuda
