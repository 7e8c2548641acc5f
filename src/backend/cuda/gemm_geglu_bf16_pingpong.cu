// The fused GEGLU GEMM for bf16, ping-pong (gemm_geglu.cuh says why a file each).
#include "backend/cuda/gemm_geglu.cuh"

namespace kiln::cuda {
template bool geglu_gemm<DType::BF16, false>(const LinearGegluArgs& a);
}  // namespace kiln::cuda
