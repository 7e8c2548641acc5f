// Linear and 2-D convolution on the CPU: both are GEMMs.
#include <omp.h>

#if defined(KILN_GEMM_ONEDNN)
#include <dnnl.h>
#else
#include <cblas.h>
#endif

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace kiln::cpu {

namespace {

// Products below this many multiply-adds run on one thread: oneDNN would still
// start its OpenMP team, which costs more than such a product takes.
constexpr double kSerialGemmWork = double(1 << 21);

void sgemm(char transb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const bool serial = double(m) * double(n) * double(k) < kSerialGemmWork && !omp_in_parallel();
  const int threads = omp_get_max_threads();
  if (serial) omp_set_num_threads(1);
#if defined(KILN_GEMM_ONEDNN)
  const dnnl_status_t s = dnnl_sgemm('N', transb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
  if (serial) omp_set_num_threads(threads);
  KILN_CHECK(s == dnnl_success, "oneDNN sgemm failed with status ", int(s));
#else
  cblas_sgemm(CblasRowMajor, CblasNoTrans, transb == 'T' ? CblasTrans : CblasNoTrans, int(m), int(n),
              int(k), 1.0f, a, int(lda), b, int(ldb), beta, c, int(ldc));
  if (serial) omp_set_num_threads(threads);
#endif
}

}  // namespace

void gemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
             int64_t ldb, float beta, float* c, int64_t ldc) {
  sgemm('T', m, n, k, a, lda, b, ldb, beta, c, ldc);
}

void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
             int64_t ldb, float* c, int64_t ldc) {
  sgemm('N', m, n, k, a, lda, b, ldb, 0.0f, c, ldc);
}

namespace {

// out[m, :] = act(out[m, :] + bias) + residual[m, :]
void epilogue(float* out, int64_t m, int64_t n, const float* bias, Activation act,
              const float* residual) {
  if (!bias && act == Activation::None && !residual) return;
#pragma omp parallel for schedule(static) if (m * n >= kParallelWork)
  for (int64_t i = 0; i < m; ++i) {
    float* row = out + i * n;
    const float* res = residual ? residual + i * n : nullptr;
    for (int64_t j = 0; j < n; ++j) {
      float v = row[j];
      if (bias) v += bias[j];
      v = apply_activation(act, v);
      if (res) v += res[j];
      row[j] = v;
    }
  }
}

const float* optional(const Tensor& t) {
  return t.defined() ? t.data<float>() : nullptr;
}

}  // namespace

void linear(const LinearArgs& a) {
  const int64_t m = a.x.dim(0), k = a.x.dim(1), n = a.weight.dim(0);
  float* out = a.out.data<float>();
  gemm_nt(m, n, k, a.x.data<float>(), k, a.weight.data<float>(), k, 0.0f, out, n);
  epilogue(out, m, n, optional(a.bias), a.act, optional(a.residual));
}

void conv2d(const Conv2dArgs& a) {
  const int64_t batch = a.x.dim(0), h = a.x.dim(1), w = a.x.dim(2), c = a.x.dim(3);
  const int64_t o = a.weight.dim(0), kh = a.weight.dim(1), kw = a.weight.dim(2);
  const int64_t ho = a.out.dim(1), wo = a.out.dim(2);
  const float* x = a.x.data<float>();
  const float* weight = a.weight.data<float>();
  float* out = a.out.data<float>();
  const int64_t patch = kh * kw * c;

  const bool pointwise = kh == 1 && kw == 1 && a.stride == 1 && a.pad_top == 0 && a.pad_left == 0 &&
                         a.pad_bottom == 0 && a.pad_right == 0;
  if (pointwise) {
    gemm_nt(batch * h * w, o, c, x, c, weight, c, 0.0f, out, o);
  } else {
    // im2col over bands of output rows, so the column buffer stays near 32 MB
    // however large the image.
    const int64_t band =
        std::clamp<int64_t>((int64_t(8) << 20) / std::max<int64_t>(wo * patch, 1), 1, ho);
    std::vector<float> col(size_t(band * wo * patch));
    for (int64_t b = 0; b < batch; ++b) {
      const float* xb = x + b * h * w * c;
      for (int64_t y0 = 0; y0 < ho; y0 += band) {
        const int64_t rows = std::min(band, ho - y0);
#pragma omp parallel for collapse(2) schedule(static) if (rows * wo * patch >= kParallelWork)
        for (int64_t yy = 0; yy < rows; ++yy) {
          for (int64_t xo = 0; xo < wo; ++xo) {
            float* dst = col.data() + (yy * wo + xo) * patch;
            const int64_t iy0 = (y0 + yy) * a.stride - a.pad_top;
            const int64_t ix0 = xo * a.stride - a.pad_left;
            for (int64_t ky = 0; ky < kh; ++ky) {
              const int64_t iy = iy0 + ky;
              for (int64_t kx = 0; kx < kw; ++kx, dst += c) {
                const int64_t ix = ix0 + kx;
                if (iy < 0 || iy >= h || ix < 0 || ix >= w) {
                  std::fill(dst, dst + c, 0.0f);
                } else {
                  const float* src = xb + (iy * w + ix) * c;
                  std::copy(src, src + c, dst);
                }
              }
            }
          }
        }
        gemm_nt(rows * wo, o, patch, col.data(), patch, weight, patch, 0.0f,
                out + ((b * ho + y0) * wo) * o, o);
      }
    }
  }
  epilogue(out, batch * ho * wo, o, optional(a.bias), Activation::None, optional(a.residual));
}

}  // namespace kiln::cpu
