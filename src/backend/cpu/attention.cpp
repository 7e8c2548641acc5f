// Scaled dot-product attention on the CPU, a block of queries at a time so that
// only a [block, Sk] slice of the score matrix exists per thread.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace kiln::cpu {

void attention(const AttentionArgs& a) {
  const int64_t batch = a.q.dim(0), sq = a.q.dim(1), sk = a.k.dim(1);
  const int64_t heads = a.heads, width = a.features(), d = width / heads;
  // Row strides: q, k and v may sit side by side in one packed tensor.
  const int64_t qs = a.q.dim(2), ks = a.k.dim(2), vs = a.v.dim(2);
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (sq + kBlock - 1) / kBlock;
  const float* q = a.q.data<float>() + a.q_col;
  const float* k = a.k.data<float>() + a.k_col;
  const float* v = a.v.data<float>() + a.v_col;
  float* out = a.out.data<float>();

#pragma omp parallel if (batch * heads * sq * sk * d >= kParallelWork * 16)
  {
    std::vector<float> scores(size_t(kBlock * sk));
#pragma omp for collapse(3) schedule(dynamic)
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t blk = 0; blk < blocks; ++blk) {
          const int64_t q0 = blk * kBlock, rows = std::min(kBlock, sq - q0);
          const float* qb = q + (b * sq + q0) * qs + h * d;
          const float* kb = k + b * sk * ks + h * d;
          const float* vb = v + b * sk * vs + h * d;
          gemm_nt(rows, sk, d, qb, qs, kb, ks, 0.0f, scores.data(), sk);
          for (int64_t i = 0; i < rows; ++i) {
            float* row = scores.data() + i * sk;
            const int64_t visible = a.causal ? q0 + i + 1 : sk;
            float max = -std::numeric_limits<float>::infinity();
            for (int64_t j = 0; j < visible; ++j) {
              row[j] *= a.scale;
              max = std::max(max, row[j]);
            }
            float sum = 0.0f;
            for (int64_t j = 0; j < visible; ++j) {
              row[j] = std::exp(row[j] - max);
              sum += row[j];
            }
            const float inv = 1.0f / sum;
            for (int64_t j = 0; j < visible; ++j) row[j] *= inv;
            std::fill(row + visible, row + sk, 0.0f);
          }
          gemm_nn(rows, d, sk, scores.data(), sk, vb, vs, out + (b * sq + q0) * width + h * d,
                  width);
        }
      }
    }
  }
}

}  // namespace kiln::cpu
