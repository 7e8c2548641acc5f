// The denoiser on CUDA replayed from CUDA graphs (graph_cache.h), one per shape key
// (rows, latent size, text length, input dtypes). The timesteps come from the host.
//
// The server's step batching changes the batch at almost every step, as requests join
// and leave. So that a few graphs serve every batch, a call's rows go into fixed inputs
// as tall as a bucket (1, 2, 3, 4, 6, 8, 12, 16, 24, 32…: fewer than half as many rows
// again) and the padding rows' outputs are dropped. No op mixes rows, so the real rows
// get the values an unpadded call gives, up to the rounding of kernels chosen for
// another batch size.
// At most `max_graphs` keys keep a graph and their arenas together stay within a
// quarter of the device's memory (KILN_CUDA_GRAPH_MEMORY_MB); the least recently used
// go first. Set KILN_CUDA_GRAPHS=0 to run eagerly.
#pragma once

#include <cstdint>
#include <shared_mutex>

#include "models/unet_2d_condition.h"
#include "pipelines/graph_cache.h"

namespace kiln {

class DenoiserGraphs {
 public:
  DenoiserGraphs(const UNet2DConditionModel& unet, std::shared_mutex& device,
                 size_t max_graphs = 12);
  ~DenoiserGraphs();
  DenoiserGraphs(const DenoiserGraphs&) = delete;
  DenoiserGraphs& operator=(const DenoiserGraphs&) = delete;

  // Whether graphs are used for a model placed on `device` (CUDA in this build, and
  // KILN_CUDA_GRAPHS is not "0").
  static bool enabled_for(Device device);

  // unet.forward(in), from a graph when the key has one. The result is the caller's.
  // A capture that fails is logged once and the key then runs eagerly.
  Tensor forward(const UNet2DConditionModel::Inputs& in);

  // The row count a call of `rows` rows runs at.
  static int64_t bucket_rows(int64_t rows);

  using Stats = GraphCache::Stats;
  Stats stats() const { return cache_.stats(); }

 private:
  const UNet2DConditionModel& unet_;
  GraphCache cache_;
};

}  // namespace kiln
