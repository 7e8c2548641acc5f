// The device context, checked-call failures, device queries and event timing.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>

#include "backend/cuda/context.h"

namespace kiln::cuda {

void fail_call(const char* library, const char* message, int code, const char* call,
               const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  throw Error(str(library, " error ", code, " (", message ? message : "?", ") in ", call, " [",
                  base ? base + 1 : file, ":", line, "]"));
}

namespace {

// cuBLASLt picks faster kernels with room to split K; 32 MiB is what cuBLAS
// itself asks for on Hopper.
constexpr size_t kGemmWorkspace = size_t(32) << 20;

Context* make_context() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    KILN_FAIL("no CUDA device is available (use --device cpu)");
  }
  auto* c = new Context();
  CUDA_CHECK(cudaGetDevice(&c->device));
  CUDA_CHECK(cudaGetDeviceProperties(&c->props, c->device));
  CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  CUBLAS_CHECK(cublasLtCreate(&c->lt));
  CUBLAS_CHECK(cublasCreate(&c->blas));
  CUBLAS_CHECK(cublasSetStream(c->blas, c->stream));
  CUBLAS_CHECK(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
  c->gemm_workspace_bytes = kGemmWorkspace;
  CUDA_CHECK(cudaMalloc(&c->gemm_workspace, c->gemm_workspace_bytes));
  CUBLAS_CHECK(cublasSetWorkspace(c->blas, c->gemm_workspace, c->gemm_workspace_bytes));
  CUDA_CHECK(cudaMalloc(&c->counters, Context::kCounters * sizeof(unsigned)));
  // On kiln's stream (non-blocking: the legacy stream does not order work before it).
  CUDA_CHECK(cudaMemsetAsync(c->counters, 0, Context::kCounters * sizeof(unsigned), c->stream));
  CUDA_CHECK(cudaStreamSynchronize(c->stream));
#if defined(KILN_WITH_CUDNN)
  // cuDNN is optional at run time too: without its library, convolutions take
  // the im2col path.
  if (cudnnCreate(&c->cudnn) == CUDNN_STATUS_SUCCESS) {
    CUDNN_CHECK(cudnnSetStream(c->cudnn, c->stream));
  } else {
    c->cudnn = nullptr;
  }
#endif
  return c;
}

}  // namespace

Context& context() {
  // Never destroyed: the driver tears contexts down at exit, and tensors in
  // static objects may still be freed after main returns.
  static Context* c = make_context();
  return *c;
}

bool available() {
  static const bool present = [] {
    int count = 0;
    const bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
    (void)cudaGetLastError();
    if (ok) register_cuda_allocator();
    return ok;
  }();
  return present;
}

DeviceInfo device_info() {
  const Context& c = context();
  DeviceInfo info;
  info.name = c.props.name;
  info.compute_major = c.props.major;
  info.compute_minor = c.props.minor;
  info.multiprocessors = c.props.multiProcessorCount;
  info.total_memory = c.props.totalGlobalMem;
  auto version = [](size_t v) { return str(v / 10000, ".", (v / 100) % 100, ".", v % 100); };
  info.cublaslt = version(cublasLtGetVersion());
  info.libraries = "cuBLASLt " + info.cublaslt;
#if defined(KILN_WITH_CUDNN)
  if (c.cudnn) {
    info.cudnn = version(cudnnGetVersion());
    info.libraries += ", cuDNN " + info.cudnn;
  }
#endif
  int runtime = 0, driver = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  (void)cudaDriverGetVersion(&driver);
  info.cuda_runtime = str(runtime / 1000, ".", (runtime % 1000) / 10);
  info.cuda_driver = str(driver / 1000, ".", (driver % 1000) / 10);
  info.libraries += ", CUDA runtime " + info.cuda_runtime + ", driver " + info.cuda_driver;
  return info;
}

bool cudnn_enabled() {
#if defined(KILN_WITH_CUDNN)
  return context().cudnn != nullptr;
#else
  return false;
#endif
}

Options& options() {
  static Options o;
  return o;
}

size_t shared_memory_limit() {
  const size_t device = context().props.sharedMemPerBlockOptin;
  const size_t asked = options().shared_memory_limit;
  return asked > 0 ? std::min(asked, device) : device;
}

void synchronize() {
  CUDA_CHECK(cudaStreamSynchronize(stream()));
}

size_t fixed_device_bytes() {
  return context().gemm_workspace_bytes + Context::kCounters * sizeof(unsigned);
}

StreamFence::StreamFence() {
  cudaEvent_t e;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  event_ = e;
}

StreamFence::~StreamFence() {
  (void)cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

void StreamFence::wait_and_mark() {
  const auto e = static_cast<cudaEvent_t>(event_);
  if (marked_) CUDA_CHECK(cudaEventSynchronize(e));
  CUDA_CHECK(cudaEventRecord(e, stream()));
  marked_ = true;
}

EventTimer::EventTimer() {
  cudaEvent_t b, e;
  CUDA_CHECK(cudaEventCreate(&b));
  CUDA_CHECK(cudaEventCreate(&e));
  begin_ = b;
  end_ = e;
}

EventTimer::~EventTimer() {
  (void)cudaEventDestroy(static_cast<cudaEvent_t>(begin_));
  (void)cudaEventDestroy(static_cast<cudaEvent_t>(end_));
}

void EventTimer::start() {
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(begin_), stream()));
}

void EventTimer::stop() {
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(end_), stream()));
}

float EventTimer::elapsed_ms() {
  CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(end_)));
  float ms = 0.0f;
  CUDA_CHECK(
      cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(begin_), static_cast<cudaEvent_t>(end_)));
  return ms;
}

namespace {
std::atomic<size_t> g_step_timed_runs{0};
}  // namespace

PlanTimer::PlanTimer(bool as_in_step) {
  if (!as_in_step) return;
  const size_t l2 = size_t(std::max(context().props.l2CacheSize, 1 << 20));
  // From the driver, not the caching allocator, so that timing a plan leaves no trace
  // in the peak kiln reports.
  if (cudaMalloc(&buffer_, 2 * l2) == cudaSuccess) {
    bytes_ = 2 * l2;
  } else {
    (void)cudaGetLastError();
    buffer_ = nullptr;
  }
}

PlanTimer::~PlanTimer() {
  if (buffer_) (void)cudaFree(buffer_);
}

float PlanTimer::time(const std::function<void()>& run, const void* hot, size_t hot_bytes,
                      int reps) {
  reps = std::max(reps, 1);
  if (!buffer_) {
    timer_.start();
    for (int r = 0; r < reps; ++r) run();
    timer_.stop();
    return timer_.elapsed_ms() / float(reps);
  }
  const size_t keep = std::min(hot_bytes, bytes_ / 4);  // at most half the L2
  float total = 0.0f;
  for (int r = 0; r < reps; ++r) {
    CUDA_CHECK(cudaMemsetAsync(buffer_, r + 1, bytes_, stream()));
    if (hot && keep)
      CUDA_CHECK(cudaMemcpyAsync(buffer_, static_cast<const char*>(hot) + (hot_bytes - keep), keep,
                                 cudaMemcpyDeviceToDevice, stream()));
    timer_.start();
    run();
    timer_.stop();
    total += timer_.elapsed_ms();
    g_step_timed_runs.fetch_add(1, std::memory_order_relaxed);
  }
  return total / float(reps);
}

size_t step_timed_runs() {
  return g_step_timed_runs.load(std::memory_order_relaxed);
}

}  // namespace kiln::cuda
