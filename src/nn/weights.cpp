#include "nn/weights.h"

#include "ops/ops.h"

namespace kiln::nn {

Shape WeightLoader::shape_of(const std::string& name) const {
  return weights_.entry(name).shape;
}

Tensor WeightLoader::place(const Tensor& host) const {
  return ops::to(host, device_, dtype_);
}

Tensor WeightLoader::load(const std::string& name, Shape shape) const {
  const Shape stored = shape_of(name);
  const bool conv_as_linear = shape.ndim() == 2 && stored.ndim() == 4 && stored[2] == 1 &&
                              stored[3] == 1 && stored[0] == shape[0] && stored[1] == shape[1];
  if (stored != shape && !conv_as_linear)
    KILN_FAIL("weight ", name, " in ", weights_.describe(), " has shape ", stored.str(),
              ", the model's config implies ", shape.str());
  return place(weights_.load(name, DType::F32).reshape(shape));
}

Tensor WeightLoader::load_conv(const std::string& name, int64_t out, int64_t in,
                               int64_t kernel) const {
  const Shape want{out, in, kernel, kernel};
  const Shape stored = shape_of(name);
  if (stored != want)
    KILN_FAIL("weight ", name, " in ", weights_.describe(), " has shape ", stored.str(),
              ", the model's config implies ", want.str());
  const Tensor oihw = weights_.load(name, DType::F32);
  Tensor ohwi = Tensor::empty({out, kernel, kernel, in}, DType::F32);
  const float* src = oihw.data<float>();
  float* dst = ohwi.data<float>();
  const int64_t plane = kernel * kernel;
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      for (int64_t p = 0; p < plane; ++p)
        dst[(o * plane + p) * in + i] = src[(o * in + i) * plane + p];
  return place(ohwi);
}

}  // namespace kiln::nn
