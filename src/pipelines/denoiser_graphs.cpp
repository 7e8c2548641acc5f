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
    : unet_(unet), device_(device), max_graphs_(max_graphs) {}

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

Tensor DenoiserGraphs::forward(const UNet2DConditionModel::Inputs& in) {
#if defined(KILN_WITH_CUDA)
  std::lock_guard<std::mutex> lock(mutex_);
  std::unique_ptr<Entry>& slot = entries_[shape_key(in)];
  if (!slot) slot = std::make_unique<Entry>();
  Entry& e = *slot;
  e.last_used = ++clock_;
  if (e.failed || ++e.calls == 1) {
    ++stats_.eager;
    std::shared_lock<std::shared_mutex> shared(device_);
    return unet_.forward(in);
  }
  if (!e.graph) {
    // Room first: the least recently used graph goes (its arena with it).
    size_t graphs = 0;
    Entry* oldest = nullptr;
    for (auto& [key, other] : entries_)
      if (other->graph) {
        ++graphs;
        if (!oldest || other->last_used < oldest->last_used) oldest = other.get();
      }
    if (graphs >= max_graphs_ && oldest) {
      oldest->graph.reset();
      oldest->fixed = {};
      oldest->calls = 0;
      ++stats_.evictions;
    }
    e.fixed = {
        fixed_like(in.sample),      fixed_like(in.timesteps), fixed_like(in.encoder_hidden_states),
        fixed_like(in.text_embeds), fixed_like(in.time_ids),  fixed_like(in.timestep_cond)};
  }
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
      return unet_.forward(in);
    }
  }
  std::shared_lock<std::shared_mutex> shared(device_);
  ++stats_.replays;
  // The next replay writes over the graph's output: the caller gets a copy.
  return e.graph->replay().clone();
#else
  return unet_.forward(in);
#endif
}

DenoiserGraphs::Stats DenoiserGraphs::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace kiln
