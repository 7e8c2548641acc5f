// The denoiser on CUDA replayed from CUDA graphs, one per shape key (rows, latent
// size, text length, input dtypes): DESIGN.md's "capture once per shape key, replay
// every step". Each graph owns a private memory pool (the shape's arena), so a
// replayed step allocates nothing and launches one graph instead of ~1000 kernels.
//
// A key's first call runs eagerly: that times the algorithm plans, which a capture
// cannot do, and a shape seen once (a one-off batch size in the server) costs no
// capture. The second call captures, and every later one replays. Inputs are copied
// into the graph's fixed input tensors before each replay (device to device; the
// timesteps from the host); the output is copied out, since the next replay writes
// over it.
//
// The server's step batching changes the batch at almost every step, as requests join
// and leave. So that a few graphs serve every batch, a call's rows go into fixed inputs
// as tall as a bucket (1, 2, 3, 4, 6, 8, 12, 16, 24, 32…: fewer than half as many rows
// again) and the padding rows' outputs are dropped. No op mixes rows, so the real rows
// get the values an unpadded call gives, up to the rounding of kernels chosen for
// another batch size.
// At most `max_graphs` keys keep a graph and their arenas together stay within a quarter of the
// device's memory (KILN_CUDA_GRAPH_MEMORY_MB); the least recently used go first. Set
// KILN_CUDA_GRAPHS=0 to run eagerly.
//
// A capture records everything queued on the backend's one stream, whichever thread
// queues it, so while one is recorded no other thread may use the device: other CUDA
// work of the pipeline (text encoding, decoding on the server's worker threads) holds
// `device` shared, and a capture holds it exclusively.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "models/unet_2d_condition.h"

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

  struct Stats {
    uint64_t eager = 0, captures = 0, replays = 0, evictions = 0;
  };
  Stats stats() const;

 private:
  struct Entry;
  void evict_beyond_budget(const Entry& keep);

  const UNet2DConditionModel& unet_;
  std::shared_mutex& device_;
  const size_t max_graphs_;
  size_t memory_budget_ = 0;  // bytes the graphs' arenas may hold together
  mutable std::mutex mutex_;  // one forward at a time: a graph's inputs are shared
  std::map<std::string, std::unique_ptr<Entry>> entries_;
  uint64_t clock_ = 0;
  Stats stats_;
};

}  // namespace kiln
