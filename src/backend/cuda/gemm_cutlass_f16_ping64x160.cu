// A plain CUTLASS GEMM for f16, ping64x160 (gemm_cutlass.cuh says why a file each).
#include "backend/cuda/gemm_cutlass.cuh"

namespace kiln::cuda {
template bool cutlass_gemm<DType::F16, CutlassGemmForm::Ping64x160>(const GemmParams& p);
}  // namespace kiln::cuda
