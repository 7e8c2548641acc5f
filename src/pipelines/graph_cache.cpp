#include "pipelines/graph_cache.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "kiln/error.h"

#if defined(KILN_WITH_CUDA)
#include "backend/cuda/cuda_backend.h"
#endif

namespace kiln {

struct GraphCache::Entry {
  std::vector<Tensor> fixed;
#if defined(KILN_WITH_CUDA)
  std::unique_ptr<cuda::CapturedForward> graph;
#endif
  uint64_t last_used = 0;
  int calls = 0;
  bool failed = false;  // the capture failed: eager from now on
};

GraphCache::GraphCache(std::string what, Forward forward, std::shared_mutex& device,
                       size_t max_graphs, size_t memory_budget)
    : what_(std::move(what)),
      forward_(std::move(forward)),
      device_(device),
      max_graphs_(max_graphs),
      memory_budget_(memory_budget) {}

GraphCache::~GraphCache() = default;

bool GraphCache::enabled_for(Device device) {
#if defined(KILN_WITH_CUDA)
  const char* env = std::getenv("KILN_CUDA_GRAPHS");
  return device == Device::CUDA && !(env && std::strcmp(env, "0") == 0);
#else
  (void)device;
  return false;
#endif
}

Tensor GraphCache::run(const std::vector<Tensor>& inputs, int64_t rows, int64_t padded_rows) {
#if defined(KILN_WITH_CUDA)
  KILN_CHECK(rows >= 1 && padded_rows >= rows, "GraphCache::run: ", rows, " rows padded to ",
             padded_rows);
  // The key: the inputs' dtypes and shapes with the rows a key has.
  std::string key;
  for (const Tensor& t : inputs)
    key += t.defined() ? str(dtype_name(t.dtype()), t.shape().with(0, padded_rows).str(), ";")
                       : "-;";
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<Entry>& slot = entries_[key];
  if (!slot) slot = std::make_unique<Entry>();
  Entry& e = *slot;
  e.last_used = ++clock_;
  {
    // Everything this queues holds the device shared, the inputs' copies included: a
    // capture on another thread (another cache's) would record them into its graph.
    std::shared_lock<std::shared_mutex> shared(device_);
    if (e.fixed.empty()) {  // a new key, or one whose graph was evicted
      e.fixed.resize(inputs.size());
      for (size_t i = 0; i < inputs.size(); ++i)
        if (inputs[i].defined())
          e.fixed[i] = Tensor::zeros(inputs[i].shape().with(0, padded_rows), inputs[i].dtype(),
                                     Device::CUDA);
    }
    for (size_t i = 0; i < inputs.size(); ++i)
      if (inputs[i].defined()) e.fixed[i].rows(0, rows).copy_from(inputs[i]);
    if (e.failed || ++e.calls == 1) {
      ++stats_.eager;
      return forward_(e.fixed).rows(0, rows);
    }
    if (e.graph) {
      ++stats_.replays;
      // The next replay writes over the graph's output: the caller gets a copy.
      return e.graph->replay().rows(0, rows).clone();
    }
  }
  {
    std::unique_lock<std::shared_mutex> exclusive(device_);
    try {
      e.graph = std::make_unique<cuda::CapturedForward>([&e, this] { return forward_(e.fixed); });
      ++stats_.captures;
    } catch (const Error& err) {
      std::fprintf(stderr, "kiln: capturing %s as a CUDA graph failed (%s); eager instead\n",
                   what_.c_str(), err.what());
      e.failed = true;
      ++stats_.eager;
      return forward_(e.fixed).rows(0, rows);
    }
    evict_beyond_budget(e);
  }
  std::shared_lock<std::shared_mutex> shared(device_);
  ++stats_.replays;
  return e.graph->replay().rows(0, rows).clone();
#else
  (void)padded_rows;
  return forward_(inputs).rows(0, rows);
#endif
}

void GraphCache::evict_beyond_budget(const Entry& keep) {
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
    oldest->fixed.clear();
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

GraphCache::Stats GraphCache::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace kiln
