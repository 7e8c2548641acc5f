#include "pipelines/denoiser_graphs.h"

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kiln/error.h"

#if defined(KILN_WITH_CUDA)
#include "backend/cuda/cuda_backend.h"
#endif

namespace kiln {
namespace {

#if defined(KILN_WITH_CUDA)
// The denoiser's inputs in one order, for the loops below.
template <class In>
auto parts(In& in) {
  return std::array{&in.sample,      &in.timesteps, &in.encoder_hidden_states,
                    &in.text_embeds, &in.time_ids,  &in.timestep_cond};
}

// The inputs' dtypes and shapes with the rows a bucket has.
std::string shape_key(const UNet2DConditionModel::Inputs& in, int64_t rows) {
  std::string key;
  for (const Tensor* t : parts(in))
    key += t->defined() ? str(dtype_name(t->dtype()), t->shape().with(0, rows).str(), ";") : "-;";
  return key;
}
#endif

}  // namespace

struct DenoiserGraphs::Entry {
  UNet2DConditionModel::Inputs fixed;
#if defined(KILN_WITH_CUDA)
  std::unique_ptr<cuda::CapturedForward> graph;
#endif
  uint64_t last_used = 0;
  int calls = 0;
  bool failed = false;  // the capture failed: eager from now on
};

DenoiserGraphs::DenoiserGraphs(const UNet2DConditionModel& unet, std::shared_mutex& device,
                               size_t max_graphs)
    : unet_(unet), device_(device), max_graphs_(max_graphs) {
#if defined(KILN_WITH_CUDA)
  // A quarter of the device for the arenas, or KILN_CUDA_GRAPH_MEMORY_MB.
  memory_budget_ = cuda::device_info().total_memory / 4;
  if (const char* mb = std::getenv("KILN_CUDA_GRAPH_MEMORY_MB"))
    memory_budget_ = size_t(std::strtoull(mb, nullptr, 10)) << 20;
#endif
}

DenoiserGraphs::~DenoiserGraphs() = default;

bool DenoiserGraphs::enabled_for(Device device) {
#if defined(KILN_WITH_CUDA)
  const char* env = std::getenv("KILN_CUDA_GRAPHS");
  return device == Device::CUDA && !(env && std::strcmp(env, "0") == 0);
#else
  (void)device;
  return false;
#endif
}

int64_t DenoiserGraphs::bucket_rows(int64_t rows) {
  if (rows <= 4) return rows;
  for (int64_t p = 4;; p *= 2) {
    if (rows <= p + p / 2) return p + p / 2;
    if (rows <= 2 * p) return 2 * p;
  }
}

Tensor DenoiserGraphs::forward(const UNet2DConditionModel::Inputs& in) {
#if defined(KILN_WITH_CUDA)
  const int64_t rows = in.sample.dim(0), padded = bucket_rows(rows);
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<Entry>& slot = entries_[shape_key(in, padded)];
  if (!slot) slot = std::make_unique<Entry>();
  Entry& e = *slot;
  e.last_used = ++clock_;
  const auto fixed = parts(e.fixed);
  const auto given = parts(in);
  if (!e.fixed.sample.defined())  // a new key, or one whose graph was evicted
    for (size_t i = 0; i < fixed.size(); ++i)
      if (given[i]->defined())
        *fixed[i] =
            Tensor::zeros(given[i]->shape().with(0, padded), given[i]->dtype(), Device::CUDA);
  // The real rows into the fixed inputs. The padding rows keep what they hold (zeros, or
  // an earlier call's rows): no op mixes rows, and their outputs are dropped.
  for (size_t i = 0; i < fixed.size(); ++i)
    if (given[i]->defined()) fixed[i]->rows(0, rows).copy_from(*given[i]);

  if (e.failed || ++e.calls == 1) {
    ++stats_.eager;
    std::shared_lock<std::shared_mutex> shared(device_);
    return unet_.forward(e.fixed).rows(0, rows);
  }
  if (!e.graph) {
    try {
      std::unique_lock<std::shared_mutex> exclusive(device_);
      e.graph =
          std::make_unique<cuda::CapturedForward>([&e, this] { return unet_.forward(e.fixed); });
      ++stats_.captures;
    } catch (const Error& err) {
      std::fprintf(stderr,
                   "kiln: capturing the denoiser as a CUDA graph failed (%s); eager instead\n",
                   err.what());
      e.failed = true;
      ++stats_.eager;
      std::shared_lock<std::shared_mutex> shared(device_);
      return unet_.forward(e.fixed).rows(0, rows);
    }
    evict_beyond_budget(e);
  }
  std::shared_lock<std::shared_mutex> shared(device_);
  ++stats_.replays;
  // The next replay writes over the graph's output: the caller gets a copy.
  return e.graph->replay().rows(0, rows).clone();
#else
  return unet_.forward(in);
#endif
}

void DenoiserGraphs::evict_beyond_budget(const Entry& keep) {
#if defined(KILN_WITH_CUDA)
  // The least recently used graphs go (their arenas with them) while there are too
  // many, or their arenas hold more than the budget.
  bool evicted = false;
  for (;;) {
    size_t graphs = 0, bytes = 0;
    Entry* oldest = nullptr;
    for (auto& [key, other] : entries_)
      if (other->graph) {
        ++graphs;
        bytes += other->graph->pool_bytes();
        if (other.get() != &keep && (!oldest || other->last_used < oldest->last_used))
          oldest = other.get();
      }
    if (!oldest || (graphs <= max_graphs_ && bytes <= memory_budget_)) break;
    oldest->graph.reset();
    evicted = true;
    oldest->fixed = {};
    oldest->calls = 0;
    ++stats_.evictions;
  }
  // An evicted arena's blocks join the shared cache, where the next graph's private
  // pool cannot use them: give them back to the driver, or the budget bounds nothing.
  if (evicted) cuda::release_cached_memory();
#else
  (void)keep;
#endif
}

DenoiserGraphs::Stats DenoiserGraphs::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace kiln
