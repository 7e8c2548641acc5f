// Reads a component's weights by checkpoint name at load time, checks each
// shape, and converts it to what the target backend's kernels want (dtype,
// device, conv weights OIHW → OHWI). Names are composed only here, at load;
// nothing looks weights up by string while a model runs.
#pragma once

#include <cstdint>
#include <string>

#include "io/safetensors.h"

namespace kiln::nn {

// Weights with each tensor's real shape and random values, for measuring speed
// and memory (which do not depend on the values) with no checkpoint at hand:
// while one of these lives, every WeightLoader draws the tensors a model asks
// for instead of reading them, and has() says yes to every name. Values are
// uniform with variance 1/fan_in (norm scales near 1, biases near 0), so that
// activations stay in range through a whole network. Not thread-safe.
class RandomWeights {
 public:
  explicit RandomWeights(uint64_t seed = 0);
  ~RandomWeights();
  RandomWeights(const RandomWeights&) = delete;
  RandomWeights& operator=(const RandomWeights&) = delete;
};

class WeightLoader {
 public:
  WeightLoader(const io::WeightSet& weights, Device device, DType dtype)
      : weights_(weights), device_(device), dtype_(dtype) {}

  bool has(const std::string& name) const;
  Device device() const { return device_; }
  // The same weights kept on the host (in this loader's dtype): for parts that a model
  // concatenates before it uploads them, so that the device never holds both.
  WeightLoader on_host() const { return {weights_, Device::CPU, dtype_}; }
  DType dtype() const { return dtype_; }

  // A weight of exactly `shape` (a linear weight stored as a 1×1 convolution,
  // [O, I, 1, 1], is accepted for [O, I]).
  Tensor load(const std::string& name, Shape shape) const;
  // A convolution weight, stored [O, I, KH, KW] (PyTorch), returned [O, KH, KW, I].
  Tensor load_conv(const std::string& name, int64_t out, int64_t in, int64_t kernel) const;
  // The shape stored for `name`, for components whose sizes come from the weights.
  Shape shape_of(const std::string& name) const;

 private:
  Tensor place(const Tensor& host) const;

  const io::WeightSet& weights_;
  Device device_;
  DType dtype_;
};

}  // namespace kiln::nn
