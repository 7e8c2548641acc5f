#include "pipelines/denoiser_graphs.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "ops/ops.h"

#if defined(KILN_WITH_CUDA)
#include "backend/cuda/cuda_backend.h"
#endif

namespace kiln {
namespace {

#if defined(KILN_WITH_CUDA)
// The graph-side copy of one input: a CUDA tensor of the same shape and dtype, at an
// address that stays fixed for the graph's life.
Tensor fixed_like(const Tensor& t) {
  return t.defined() ? Tensor::zeros(t.shape(), t.dtype(), Device::CUDA) : Tensor();
}

void refill(Tensor& fixed, const Tensor& value) {
  if (fixed.defined()) fixed.copy_from(value);
}

std::string shape_key(const UNet2DConditionModel::Inputs& in) {
  std::string key;
  for (const Tensor* t : {&in.sample, &in.timesteps, &in.encoder_hidden_states, &in.text_embeds,
                          &in.time_ids, &in.timestep_cond})
    key += (t->defined() ? t->describe() : std::string("-")) + ";";
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

#if defined(KILN_WITH_CUDA)
namespace {

// `t` with zero rows appended up to `rows`: padding rows that the caller drops.
Tensor pad_rows(const Tensor& t, int64_t rows) {
  if (!t.defined() || t.dim(0) == rows) return t;
  Shape pad = t.shape();
  pad[0] = rows - t.dim(0);
  return ops::concat_rows({t, Tensor::zeros(pad, t.dtype(), t.device())});
}

}  // namespace
#endif

Tensor DenoiserGraphs::forward(const UNet2DConditionModel::Inputs& unpadded) {
#if defined(KILN_WITH_CUDA)
  const int64_t rows = unpadded.sample.dim(0), padded = bucket_rows(rows);
  UNet2DConditionModel::Inputs in = unpadded;
  for (Tensor* t : {&in.sample, &in.timesteps, &in.encoder_hidden_states, &in.text_embeds,
                    &in.time_ids, &in.timestep_cond})
    *t = pad_rows(*t, padded);
  auto real_rows = [&](const Tensor& out) { return padded == rows ? out : out.rows(0, rows); };

  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<Entry>& slot = entries_[shape_key(in)];
  if (!slot) slot = std::make_unique<Entry>();
  Entry& e = *slot;
  e.last_used = ++clock_;
  if (e.failed || ++e.calls == 1) {
    ++stats_.eager;
    std::shared_lock<std::shared_mutex> shared(device_);
    return real_rows(unet_.forward(in));
  }
  if (!e.graph)
    e.fixed = {
        fixed_like(in.sample),      fixed_like(in.timesteps), fixed_like(in.encoder_hidden_states),
        fixed_like(in.text_embeds), fixed_like(in.time_ids),  fixed_like(in.timestep_cond)};
  refill(e.fixed.sample, in.sample);
  refill(e.fixed.timesteps, in.timesteps);
  refill(e.fixed.encoder_hidden_states, in.encoder_hidden_states);
  refill(e.fixed.text_embeds, in.text_embeds);
  refill(e.fixed.time_ids, in.time_ids);
  refill(e.fixed.timestep_cond, in.timestep_cond);
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
      e.fixed = {};
      ++stats_.eager;
      std::shared_lock<std::shared_mutex> shared(device_);
      return real_rows(unet_.forward(in));
    }
    evict_beyond_budget(e);
  }
  std::shared_lock<std::shared_mutex> shared(device_);
  ++stats_.replays;
  // The next replay writes over the graph's output: the caller gets a copy.
  return real_rows(e.graph->replay()).clone();
#else
  return unet_.forward(unpadded);
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
