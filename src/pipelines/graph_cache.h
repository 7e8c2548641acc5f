// A model's forward on CUDA replayed from CUDA graphs, one per shape key (the inputs'
// dtypes and shapes): DESIGN.md's "capture once per shape key, replay every step".
// Each graph owns a private memory pool (the shape's arena), so a replay allocates
// nothing and launches one graph instead of hundreds of kernels, whose launches
// bound a short forward run eagerly (the 512² VAE decode: 6.12 ms eager against 4.71
// replayed on an H100, bench/results/2026-12-07-v34).
//
// A key's first call runs eagerly: that times the algorithm plans, which a capture
// cannot do, and a shape seen once costs no capture. The second call captures, and
// every later one replays. Inputs are copied into the key's fixed input tensors
// before each replay (device to device, or from the host); the output is copied out,
// since the next replay writes over it.
//
// At most `max_graphs` keys keep a graph, and their arenas together stay within
// `memory_budget` bytes; the least recently used go first. Set KILN_CUDA_GRAPHS=0 to
// run eagerly.
//
// A capture records everything queued on the backend's one stream, whichever thread
// queues it, so while one is recorded no other thread may use the device: other CUDA
// work holds `device` shared, and a capture holds it exclusively.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace kiln {

class GraphCache {
 public:
  // The forward over the fixed inputs (as many as run() is given, in the same places;
  // an undefined one stays undefined).
  using Forward = std::function<Tensor(const std::vector<Tensor>&)>;

  // what: the model, as a failed capture's log line names it ("the denoiser").
  GraphCache(std::string what, Forward forward, std::shared_mutex& device, size_t max_graphs,
             size_t memory_budget);
  ~GraphCache();
  GraphCache(const GraphCache&) = delete;
  GraphCache& operator=(const GraphCache&) = delete;

  // Whether graphs are used for a model placed on `device` (CUDA in this build, and
  // KILN_CUDA_GRAPHS is not "0").
  static bool enabled_for(Device device);

  // forward(inputs), from a graph when the key has one. Each input's first `rows` rows
  // go into the key's fixed inputs, `padded_rows` tall; the padding rows keep what
  // they hold, so the forward must not mix rows. Returns the output's first `rows`
  // rows, the caller's. A capture that fails is logged and the key then runs eagerly.
  Tensor run(const std::vector<Tensor>& inputs, int64_t rows, int64_t padded_rows);

  struct Stats {
    uint64_t eager = 0, captures = 0, replays = 0, evictions = 0;
  };
  Stats stats() const;

 private:
  struct Entry;
  void evict_beyond_budget(const Entry& keep);

  const std::string what_;
  const Forward forward_;
  std::shared_mutex& device_;
  const size_t max_graphs_;
  const size_t memory_budget_;  // bytes the graphs' arenas may hold together
  mutable std::mutex mutex_;    // one call at a time: a key's inputs are shared
  std::map<std::string, std::unique_ptr<Entry>> entries_;
  uint64_t clock_ = 0;
  Stats stats_;
};

}  // namespace kiln
