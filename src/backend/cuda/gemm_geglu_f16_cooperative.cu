// The fused GEGLU GEMM for f16, cooperative (gemm_geglu.cuh says why a file each).
#include "backend/cuda/gemm_geglu.cuh"

namespace kiln::cuda {
template bool geglu_gemm<DType::F16, true>(const LinearGegluArgs& a);
}  // namespace kiln::cuda
