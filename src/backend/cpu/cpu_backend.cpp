#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

namespace kiln::cpu {

float apply_activation(Activation act, float x) {
  switch (act) {
    case Activation::None:
      return x;
    case Activation::SiLU:
      return x / (1.0f + std::exp(-x));
    case Activation::GELU:
      return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f));
    case Activation::GELUTanh: {
      const float inner = 0.7978845608028654f * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.0f + std::tanh(inner));
    }
    case Activation::QuickGELU:
      return x / (1.0f + std::exp(-1.702f * x));
  }
  return x;
}

namespace {

std::atomic<double> g_flops{0.0};  // counted by CpuBackend (flop_count)

void binary(const BinaryArgs& a) {
  const float* x = a.a.data<float>();
  const float* y = a.b.data<float>();
  float* out = a.out.data<float>();
  const int64_t n = a.a.numel();
  const bool add = a.op == BinaryOp::Add;
  if (a.b.numel() == n) {
#pragma omp parallel for schedule(static) if (n >= kParallelWork)
    for (int64_t i = 0; i < n; ++i) out[i] = add ? x[i] + y[i] : x[i] * y[i];
    return;
  }
  // Broadcast: b's dims right-aligned against a's; stride 0 where b has extent 1.
  const int nd = a.a.ndim(), off = nd - a.b.ndim();
  int64_t bstride[Shape::kMaxDims] = {};
  int64_t s = 1;
  for (int i = nd - 1; i >= off; --i) {
    const int64_t extent = a.b.dim(i - off);
    bstride[i] = extent == 1 ? 0 : s;
    s *= extent;
  }
  const int64_t inner = a.a.dim(-1), rows = n / std::max<int64_t>(inner, 1);
  const int64_t inner_stride = bstride[nd - 1];
#pragma omp parallel for schedule(static) if (n >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r, bi = 0;
    for (int i = nd - 2; i >= 0; --i) {
      const int64_t extent = a.a.dim(i);
      bi += (rem % extent) * bstride[i];
      rem /= extent;
    }
    const float* xr = x + r * inner;
    float* orow = out + r * inner;
    for (int64_t j = 0; j < inner; ++j) {
      const float yv = y[bi + j * inner_stride];
      orow[j] = add ? xr[j] + yv : xr[j] * yv;
    }
  }
}

void unary(const UnaryArgs& a) {
  const float* x = a.x.data<float>();
  float* out = a.out.data<float>();
  const int64_t n = a.x.numel();
#pragma omp parallel for schedule(static) if (n >= kParallelWork)
  for (int64_t i = 0; i < n; ++i)
    out[i] = std::clamp(apply_activation(a.act, x[i]) * a.scale, a.lo, a.hi);
}

void linear_combination(const LinearCombinationArgs& a) {
  float* out = a.out.data<float>();
  const int64_t n = a.out.numel();
  std::vector<const float*> terms;
  for (const Tensor& t : a.terms) terms.push_back(t.data<float>());
  const size_t count = terms.size();
#pragma omp parallel for schedule(static) if (n >= kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    float v = 0.0f;
    for (size_t t = 0; t < count; ++t) v += a.coeffs[t] * terms[t][i];
    out[i] = v;
  }
}

void geglu(const GegluArgs& a) {
  const int64_t m = a.out.dim(0), n = a.out.dim(1);
  const float* x = a.x.data<float>();
  float* out = a.out.data<float>();
#pragma omp parallel for schedule(static) if (m * n >= kParallelWork)
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * 2 * n;
    for (int64_t j = 0; j < n; ++j) {
      // block 0: [hidden | gate]; else blocks of `block` hidden, then gate, columns.
      const int64_t h = a.block == 0 ? j : (j / a.block) * 2 * a.block + j % a.block;
      const int64_t g = a.block == 0 ? n + j : h + a.block;
      out[i * n + j] = row[h] * apply_activation(Activation::GELU, row[g]);
    }
  }
}

void concat(const ConcatArgs& a) {
  const int64_t outer = a.out.dim(0), total = a.out.dim(1);
  const size_t elem = dtype_size(a.out.dtype());
  char* out = static_cast<char*>(a.out.raw());
#pragma omp parallel for schedule(static) if (outer * total >= kParallelWork)
  for (int64_t i = 0; i < outer; ++i) {
    int64_t at = 0;
    for (const Tensor& p : a.parts) {
      const int64_t w = p.dim(1);
      std::memcpy(out + size_t(i * total + at) * elem,
                  static_cast<const char*>(p.raw()) + size_t(i * w) * elem, size_t(w) * elem);
      at += w;
    }
  }
}

void upsample_nearest(const UpsampleArgs& a) {
  const int64_t batch = a.x.dim(0), h = a.x.dim(1), w = a.x.dim(2), c = a.x.dim(3);
  const int64_t ho = a.out.dim(1), wo = a.out.dim(2);
  const float* x = a.x.data<float>();
  float* out = a.out.data<float>();
  // torch's 'nearest': source = floor(dst * (in / out)), the ratio in float.
  const float sy = float(h) / float(ho), sx = float(w) / float(wo);
#pragma omp parallel for collapse(2) schedule(static) if (a.out.numel() >= kParallelWork)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t y = 0; y < ho; ++y) {
      const int64_t iy = std::min(int64_t(float(y) * sy), h - 1);
      for (int64_t xo = 0; xo < wo; ++xo) {
        const int64_t ix = std::min(int64_t(float(xo) * sx), w - 1);
        const float* src = x + ((b * h + iy) * w + ix) * c;
        std::copy(src, src + c, out + ((b * ho + y) * wo + xo) * c);
      }
    }
  }
}

void interleave_phases(const InterleavePhasesArgs& a) {
  const int64_t batch = a.out.dim(0), ho = a.out.dim(1), wo = a.out.dim(2), c = a.out.dim(3);
  const int64_t hz = a.x.dim(1), wz = a.x.dim(2);
  const float* x = a.x.data<float>();
  float* out = a.out.data<float>();
#pragma omp parallel for collapse(2) schedule(static) if (a.out.numel() >= kParallelWork)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t y = 0; y < ho; ++y) {
      const int64_t r = y % 2, zy = y / 2 + r;
      for (int64_t xo = 0; xo < wo; ++xo) {
        const int64_t col = xo % 2, zx = xo / 2 + col;
        const float* src = x + ((b * hz + zy) * wz + zx) * 4 * c + (2 * r + col) * c;
        std::copy(src, src + c, out + ((b * ho + y) * wo + xo) * c);
      }
    }
  }
}

void timestep_embedding(const TimestepEmbeddingArgs& a) {
  const int64_t batch = a.timesteps.dim(0), half = a.dim / 2;
  const float* t = a.timesteps.data<float>();
  float* out = a.out.data<float>();
  // Each step rounded to f32 as diffusers' get_timestep_embedding does.
  const float log_period = float(-std::log(double(a.max_period)));
  const float denom = float(double(half) - double(a.downscale_freq_shift));
  for (int64_t b = 0; b < batch; ++b) {
    float* row = out + b * a.dim;
    for (int64_t i = 0; i < half; ++i) {
      const float freq = std::exp(log_period * float(i) / denom);
      const float arg = a.scale * (t[b] * freq);
      const float s = std::sin(arg), c = std::cos(arg);
      row[a.flip_sin_to_cos ? half + i : i] = s;
      row[a.flip_sin_to_cos ? i : half + i] = c;
    }
    if (a.dim % 2) row[a.dim - 1] = 0.0f;
  }
}

void embedding(const EmbeddingArgs& a) {
  const int64_t n = a.ids.numel(), v = a.table.dim(0), c = a.table.dim(1);
  const int32_t* ids = a.ids.data<int32_t>();
  const float* table = a.table.data<float>();
  float* out = a.out.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    KILN_CHECK(ids[i] >= 0 && ids[i] < v, "embedding: id ", ids[i], " outside [0, ", v, ")");
    std::copy(table + ids[i] * c, table + (ids[i] + 1) * c, out + i * c);
  }
}

void slice_last(const SliceLastArgs& a) {
  const int64_t m = a.x.dim(0), c = a.x.dim(1), w = a.out.dim(1);
  const float* x = a.x.data<float>();
  float* out = a.out.data<float>();
  for (int64_t i = 0; i < m; ++i)
    std::copy(x + i * c + a.begin, x + i * c + a.begin + w, out + i * w);
}

float load(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::F32:
      return static_cast<const float*>(p)[i];
    case DType::F16:
      return f16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16:
      return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    default:
      KILN_CHECK(false, "cast of ", dtype_name(t));
  }
}

void store(DType t, void* p, int64_t i, float v) {
  switch (t) {
    case DType::F32:
      static_cast<float*>(p)[i] = v;
      break;
    case DType::F16:
      static_cast<uint16_t*>(p)[i] = float_to_f16(v);
      break;
    case DType::BF16:
      static_cast<uint16_t*>(p)[i] = float_to_bf16(v);
      break;
    default:
      KILN_CHECK(false, "cast to ", dtype_name(t));
  }
}

void cast(const CastArgs& a) {
  const int64_t n = a.x.numel();
  const DType from = a.x.dtype(), to = a.out.dtype();
  const void* x = a.x.raw();
  void* out = a.out.raw();
#pragma omp parallel for schedule(static) if (n >= kParallelWork)
  for (int64_t i = 0; i < n; ++i) store(to, out, i, load(from, x, i));
}

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::CPU; }
  DType activation_dtype() const override { return DType::F32; }
  void linear(const LinearArgs& a) override {
    count(linear_flops(a));
    cpu::linear(a);
  }
  void conv2d(const Conv2dArgs& a) override {
    count(conv2d_flops(a));
    cpu::conv2d(a);
  }
  void group_norm(const GroupNormArgs& a) override { cpu::group_norm(a); }
  void layer_norm(const LayerNormArgs& a) override { cpu::layer_norm(a); }
  void attention(const AttentionArgs& a) override {
    count(attention_flops(a));
    cpu::attention(a);
  }
  void binary(const BinaryArgs& a) override { cpu::binary(a); }
  void unary(const UnaryArgs& a) override { cpu::unary(a); }
  void linear_combination(const LinearCombinationArgs& a) override { cpu::linear_combination(a); }
  void geglu(const GegluArgs& a) override { cpu::geglu(a); }
  void concat(const ConcatArgs& a) override { cpu::concat(a); }
  void upsample_nearest(const UpsampleArgs& a) override { cpu::upsample_nearest(a); }
  void interleave_phases(const InterleavePhasesArgs& a) override { cpu::interleave_phases(a); }
  void timestep_embedding(const TimestepEmbeddingArgs& a) override { cpu::timestep_embedding(a); }
  void embedding(const EmbeddingArgs& a) override { cpu::embedding(a); }
  void slice_last(const SliceLastArgs& a) override { cpu::slice_last(a); }
  void cast(const CastArgs& a) override { cpu::cast(a); }

 private:
  static void count(double flops) { g_flops.fetch_add(flops, std::memory_order_relaxed); }
};

}  // namespace

double flop_count() {
  return g_flops.load(std::memory_order_relaxed);
}

void reset_flop_count() {
  g_flops.store(0.0, std::memory_order_relaxed);
}

Backend& backend() {
  static CpuBackend instance;
  return instance;
}

}  // namespace kiln::cpu
