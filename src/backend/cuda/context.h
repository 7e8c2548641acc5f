// What the CUDA backend's files share on the host side: checked calls, the
// device context (stream, library handles, GEMM workspace) and scratch memory.
// Internal to src/backend/cuda/.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>

#if defined(KILN_WITH_CUDNN)
#include <cudnn.h>
#endif

#include "backend/cuda/cuda_backend.h"

namespace kiln::cuda {

[[noreturn]] void fail_call(const char* library, const char* message, int code, const char* call,
                            const char* file, int line);

}  // namespace kiln::cuda

#define CUDA_CHECK(call)                                                                          \
  do {                                                                                            \
    const cudaError_t kiln_e_ = (call);                                                           \
    if (kiln_e_ != cudaSuccess) [[unlikely]]                                                      \
      ::kiln::cuda::fail_call("CUDA", cudaGetErrorString(kiln_e_), int(kiln_e_), #call, __FILE__, \
                              __LINE__);                                                          \
  } while (0)

// After a kernel launch: a bad configuration shows up here, not at the next call.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#define CUBLAS_CHECK(call)                                                                   \
  do {                                                                                       \
    const cublasStatus_t kiln_s_ = (call);                                                   \
    if (kiln_s_ != CUBLAS_STATUS_SUCCESS) [[unlikely]]                                       \
      ::kiln::cuda::fail_call("cuBLAS", cublasGetStatusString(kiln_s_), int(kiln_s_), #call, \
                              __FILE__, __LINE__);                                           \
  } while (0)

#if defined(KILN_WITH_CUDNN)
#define CUDNN_CHECK(call)                                                                 \
  do {                                                                                    \
    const cudnnStatus_t kiln_s_ = (call);                                                 \
    if (kiln_s_ != CUDNN_STATUS_SUCCESS) [[unlikely]]                                     \
      ::kiln::cuda::fail_call("cuDNN", cudnnGetErrorString(kiln_s_), int(kiln_s_), #call, \
                              __FILE__, __LINE__);                                        \
  } while (0)
#endif

namespace kiln::cuda {

// One per process: kiln drives one device from one host thread at a time.
struct Context {
  int device = 0;
  cudaDeviceProp props{};
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t blas = nullptr;
  void* gemm_workspace = nullptr;  // fixed, so that GEMMs can be captured in a graph
  size_t gemm_workspace_bytes = 0;
#if defined(KILN_WITH_CUDNN)
  cudnnHandle_t cudnn = nullptr;  // null when the library failed to load
#endif
  bool capturing = false;  // a CapturedForward is recording
  // Zeroed counters for kernels whose last block to finish does a final step
  // (GroupNorm's statistics); every kernel leaves the ones it used at zero.
  unsigned* counters = nullptr;
  static constexpr int kCounters = 4096;
};
// Creates the context on first use; throws kiln::Error when there is no device.
Context& context();
// Bytes of shared memory a block may opt into: the device's limit, or
// options().shared_memory_limit where that is set and lower. A kernel that needs more
// is not launched; its caller takes another path.
size_t shared_memory_limit();
inline cudaStream_t stream() {
  return context().stream;
}

// Device memory for a kernel's temporaries, from the caching allocator; freed
// (returned to the cache) when the pointer goes.
std::shared_ptr<Buffer> scratch(size_t bytes);

// The allocator for Device::CUDA (allocator.cpp); the graph code reserves pools in it.
int create_pool();
void release_pool(int pool);
size_t pool_bytes(int pool);
// Allocations on this thread come from `pool` while the scope lives.
class PoolScope {
 public:
  explicit PoolScope(int pool);
  ~PoolScope();
  PoolScope(const PoolScope&) = delete;
  PoolScope& operator=(const PoolScope&) = delete;

 private:
  int previous_;
};
void register_cuda_allocator();

// FLOPs of GEMM-like work, counted as the ops run (cuda_backend.cpp).
void count_flops(double flops);
// While on, ops being captured into a graph get timed event nodes around them.
void profile_capture(bool on);

}  // namespace kiln::cuda
