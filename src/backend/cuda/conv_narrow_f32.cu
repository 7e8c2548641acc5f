// The few-output narrow convolutions for float (conv_narrow_few_out.cuh says why a file a type).
#include "backend/cuda/conv_narrow_few_out.cuh"

namespace kiln::cuda {
template void conv_few_out<float>(const NarrowParams& p, int n, int form);
}  // namespace kiln::cuda
