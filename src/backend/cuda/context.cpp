// The device context, checked-call failures, device queries and event timing.
#include <algorithm>
#include <atomic>
#include <cstdlib>
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
  static Options o = [] {
    Options made;
    // KILN_CUDA_BRANCHES=0: everything on one stream (generate and serve have no flag).
    if (const char* b = std::getenv("KILN_CUDA_BRANCHES"); b && std::strcmp(b, "0") == 0)
      made.branches = false;
    return made;
  }();
  return o;
}

void synchronize() {
  CUDA_CHECK(cudaStreamSynchronize(stream()));
  // A branch not yet joined may still be running beside it.
  if (const cudaStream_t side = context().side_stream; side && side != stream())
    CUDA_CHECK(cudaStreamSynchronize(side));
}

#if defined(KILN_WITH_CUDNN)
cudnnHandle_t cudnn_handle() {
  return detail::t_side ? context().side_cudnn : context().cudnn;
}
#endif

namespace {

// A thread's branch: its events, and whether it is inside one or has one to join.
struct BranchState {
  cudaEvent_t fork = nullptr, done = nullptr;
  bool inside = false, pending = false;
};
thread_local BranchState t_branch;
std::mutex g_side_mu;
std::atomic<size_t> g_branches_begun{0};

// The side stream and its scratch, made once, outside any capture.
bool side_ready() {
  Context& c = context();
  std::lock_guard<std::mutex> lock(g_side_mu);
  if (c.side_stream) return true;
  if (c.capturing) return false;
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_CHECK(cudaMalloc(&c.side_gemm_workspace, c.gemm_workspace_bytes));
  CUDA_CHECK(cudaMalloc(&c.side_counters, Context::kCounters * sizeof(unsigned)));
  CUDA_CHECK(cudaMemsetAsync(c.side_counters, 0, Context::kCounters * sizeof(unsigned), s));
  CUDA_CHECK(cudaStreamSynchronize(s));
#if defined(KILN_WITH_CUDNN)
  // A handle of its own: a handle is bound to one stream, and the main stream's may be
  // in use on another thread.
  if (c.cudnn) {
    CUDNN_CHECK(cudnnCreate(&c.side_cudnn));
    CUDNN_CHECK(cudnnSetStream(c.side_cudnn, s));
  }
#endif
  c.side_stream = s;
  return true;
}

}  // namespace

bool begin_branch() {
  BranchState& b = t_branch;
  if (b.inside || !side_ready()) return false;
  Context& c = context();
  if (!b.fork) {
    CUDA_CHECK(cudaEventCreateWithFlags(&b.fork, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&b.done, cudaEventDisableTiming));
  }
  CUDA_CHECK(cudaEventRecord(b.fork, c.stream));
  CUDA_CHECK(cudaStreamWaitEvent(c.side_stream, b.fork, 0));
  g_branches_begun.fetch_add(1, std::memory_order_relaxed);
  if (!b.pending) defer_frees(true);
  b.pending = true;
  b.inside = true;
  detail::t_side = c.side_stream;
  return true;
}

void end_branch() {
  BranchState& b = t_branch;
  if (!b.inside) return;
  detail::t_side = nullptr;
  b.inside = false;
  CUDA_CHECK(cudaEventRecord(b.done, context().side_stream));
}

void join_branch() {
  BranchState& b = t_branch;
  if (b.inside) end_branch();
  if (!b.pending) return;
  b.pending = false;
  const cudaError_t waited = cudaStreamWaitEvent(context().stream, b.done, 0);
  defer_frees(false);  // even if the wait failed: a count left up would stop all reuse
  CUDA_CHECK(waited);
}

size_t branches_begun() {
  return g_branches_begun.load(std::memory_order_relaxed);
}

size_t fixed_device_bytes() {
  const Context& c = context();
  size_t n = c.gemm_workspace_bytes + Context::kCounters * sizeof(unsigned);
  if (c.side_stream) n += c.gemm_workspace_bytes + Context::kCounters * sizeof(unsigned);
  return n;
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
  synchronize();  // timed alone, not beside a branch's work
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
