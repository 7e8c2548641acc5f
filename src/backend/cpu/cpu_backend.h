// The CPU backend: the numerical reference. Computes in f32 with OpenMP over the
// machine's cores; GEMMs go to oneDNN's sgemm (measured faster than OpenBLAS on
// every shape the models use, most of all the small-K ones; see docs/cpu-gemm.md),
// or to a CBLAS where oneDNN is not installed.
#pragma once

#include "backend/backend.h"

namespace kiln::cpu {

Backend& backend();

// FLOPs of the linear, convolution and attention calls since the last reset (the
// formulas in backend.h, the CUDA backend's too): what `kiln bench` reports.
double flop_count();
void reset_flop_count();

// Kernels, one group per file; each takes validated f32 arguments.
void linear(const LinearArgs& a);
void conv2d(const Conv2dArgs& a);
void attention(const AttentionArgs& a);
void group_norm(const GroupNormArgs& a);
void layer_norm(const LayerNormArgs& a);

// C[M, N] = A[M, K] · B[N, K]^T (+ beta · C), row-major with leading dimensions.
void gemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
             int64_t ldb, float beta, float* c, int64_t ldc);
// C[M, N] = A[M, K] · B[K, N], row-major with leading dimensions.
void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
             int64_t ldb, float* c, int64_t ldc);

// Loops over fewer elements than this run on one thread: waking the pool costs
// more than the work, and far more when other processes hold the other cores.
constexpr int64_t kParallelWork = int64_t(1) << 15;

// Activation functions as torch computes them in f32.
float apply_activation(Activation act, float x);

}  // namespace kiln::cpu
