#include "backend/backend.h"

#include "backend/cpu/cpu_backend.h"
#if defined(KILN_WITH_CUDA)
#include "backend/cuda/cuda_backend.h"
#endif

namespace kiln {

#if defined(KILN_WITH_CUDA)
namespace {
// Asked at start-up so that the CUDA allocator is registered before anything
// places a tensor there; without a device this only records that there is none.
[[maybe_unused]] const bool g_cuda_present = cuda::available();
}  // namespace
#endif

Backend& backend_for(Device device) {
  if (device == Device::CPU) return cpu::backend();
#if defined(KILN_WITH_CUDA)
  if (device == Device::CUDA) {
    if (!cuda::available()) KILN_FAIL("no CUDA device is available (use --device cpu)");
    return cuda::backend();
  }
#endif
  KILN_FAIL("no backend for device ", device_name(device), " in this build");
}

}  // namespace kiln
