#include "pipelines/denoiser_graphs.h"

#include <array>
#include <cstdlib>
#include <vector>

#if defined(KILN_WITH_CUDA)
#include "backend/cuda/cuda_backend.h"
#endif

namespace kiln {
namespace {

// The denoiser's inputs in one order, for GraphCache's list and back.
template <class In>
auto parts(In& in) {
  return std::array{&in.sample,      &in.timesteps, &in.encoder_hidden_states,
                    &in.text_embeds, &in.time_ids,  &in.timestep_cond};
}

// A quarter of the device for the arenas, or KILN_CUDA_GRAPH_MEMORY_MB.
size_t graph_memory_budget() {
  size_t budget = 0;
#if defined(KILN_WITH_CUDA)
  budget = cuda::device_info().total_memory / 4;
#endif
  if (const char* mb = std::getenv("KILN_CUDA_GRAPH_MEMORY_MB"))
    budget = size_t(std::strtoull(mb, nullptr, 10)) << 20;
  return budget;
}

}  // namespace

DenoiserGraphs::DenoiserGraphs(const UNet2DConditionModel& unet, std::shared_mutex& device,
                               size_t max_graphs)
    : unet_(unet),
      cache_(
          "the denoiser",
          [this](const std::vector<Tensor>& fixed) {
            UNet2DConditionModel::Inputs in;
            const auto slots = parts(in);
            for (size_t i = 0; i < slots.size(); ++i) *slots[i] = fixed[i];
            return unet_.forward(in);
          },
          device, max_graphs, graph_memory_budget()) {}

DenoiserGraphs::~DenoiserGraphs() = default;

bool DenoiserGraphs::enabled_for(Device device) {
  return GraphCache::enabled_for(device);
}

int64_t DenoiserGraphs::bucket_rows(int64_t rows) {
  if (rows <= 4) return rows;
  for (int64_t p = 4;; p *= 2) {
    if (rows <= p + p / 2) return p + p / 2;
    if (rows <= 2 * p) return 2 * p;
  }
}

Tensor DenoiserGraphs::forward(const UNet2DConditionModel::Inputs& in) {
  std::vector<Tensor> inputs;
  for (const Tensor* t : parts(in)) inputs.push_back(*t);
  const int64_t rows = in.sample.dim(0);
  return cache_.run(inputs, rows, bucket_rows(rows));
}

}  // namespace kiln
