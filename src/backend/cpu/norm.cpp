// GroupNorm (optionally fused with an activation) and LayerNorm on the CPU.
// Statistics accumulate in double: the reference's float accumulation differs
// from exact by far less than the numerics contract allows.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace kiln::cpu {

void group_norm(const GroupNormArgs& a) {
  const int64_t batch = a.x.dim(0), n = a.x.dim(1), c = a.x.dim(2);
  const int64_t groups = a.groups, cg = c / groups;
  const float* x = a.x.data<float>();
  const float* gamma = a.gamma.data<float>();
  const float* beta = a.beta.data<float>();
  float* out = a.out.data<float>();
  if (a.addend.defined()) {
    // out = x + addend[b, c], then normalised in place (each pass reads a row before
    // writing it), as the separate add did.
    const float* add = a.addend.data<float>() + a.addend_col;
    const int64_t add_stride = a.addend.dim(1);
#pragma omp parallel for schedule(static) if (batch * n * c >= kParallelWork)
    for (int64_t i = 0; i < batch * n; ++i) {
      const float* ab = add + (i / n) * add_stride;
      for (int64_t j = 0; j < c; ++j) out[i * c + j] = x[i * c + j] + ab[j];
    }
    x = out;
  }

  for (int64_t b = 0; b < batch; ++b) {
    const float* xb = x + b * n * c;
    // Per-channel sums over positions, each thread over its own rows, then reduced.
    std::vector<double> sum(static_cast<size_t>(c), 0.0), sumsq(static_cast<size_t>(c), 0.0);
#pragma omp parallel if (n * c >= kParallelWork)
    {
      std::vector<double> s(static_cast<size_t>(c), 0.0), ss(static_cast<size_t>(c), 0.0);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        const float* row = xb + i * c;
        for (int64_t j = 0; j < c; ++j) {
          const double v = row[j];
          s[size_t(j)] += v;
          ss[size_t(j)] += v * v;
        }
      }
#pragma omp critical
      for (int64_t j = 0; j < c; ++j) {
        sum[size_t(j)] += s[size_t(j)];
        sumsq[size_t(j)] += ss[size_t(j)];
      }
    }
    // Fold each group's statistics into a per-channel scale and shift.
    std::vector<float> scale(static_cast<size_t>(c)), shift(static_cast<size_t>(c));
    const double count = double(n * cg);
    for (int64_t g = 0; g < groups; ++g) {
      double s = 0.0, ss = 0.0;
      for (int64_t j = g * cg; j < (g + 1) * cg; ++j) {
        s += sum[size_t(j)];
        ss += sumsq[size_t(j)];
      }
      const double mean = s / count;
      const double var = std::max(ss / count - mean * mean, 0.0);
      const double rstd = 1.0 / std::sqrt(var + double(a.eps));
      for (int64_t j = g * cg; j < (g + 1) * cg; ++j) {
        scale[size_t(j)] = float(rstd * gamma[j]);
        shift[size_t(j)] = float(beta[j] - mean * rstd * gamma[j]);
      }
    }
    float* ob = out + b * n * c;
#pragma omp parallel for schedule(static) if (n * c >= kParallelWork)
    for (int64_t i = 0; i < n; ++i) {
      const float* row = xb + i * c;
      float* orow = ob + i * c;
      for (int64_t j = 0; j < c; ++j)
        orow[j] = apply_activation(a.act, row[j] * scale[size_t(j)] + shift[size_t(j)]);
    }
  }
}

void layer_norm(const LayerNormArgs& a) {
  const int64_t m = a.x.dim(0), c = a.x.dim(1);
  const float* x = a.x.data<float>();
  const float* gamma = a.gamma.data<float>();
  const float* beta = a.beta.data<float>();
  float* out = a.out.data<float>();
#pragma omp parallel for schedule(static) if (m * c >= kParallelWork)
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * c;
    double s = 0.0;
    for (int64_t j = 0; j < c; ++j) s += row[j];
    const double mean = s / double(c);
    double ss = 0.0;
    for (int64_t j = 0; j < c; ++j) ss += (row[j] - mean) * (row[j] - mean);
    const double rstd = 1.0 / std::sqrt(ss / double(c) + double(a.eps));
    float* orow = out + i * c;
    for (int64_t j = 0; j < c; ++j) orow[j] = float((row[j] - mean) * rstd) * gamma[j] + beta[j];
  }
}

}  // namespace kiln::cpu
