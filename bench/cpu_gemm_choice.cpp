// Compares OpenBLAS and oneDNN sgemm on the GEMM shapes the SD models run on the
// CPU (row-major A[M,K] x B[N,K]^T, as kiln's linear and im2col convolution do).
// Build: g++ -O2 bench/cpu_gemm_choice.cpp -lopenblas -ldnnl -o /tmp/gemm_choice
// Run:   OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 /tmp/gemm_choice
#include <cblas.h>
#include <dnnl.h>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>
int main() {
  struct S {
    int M, N, K;
  } shapes[] = {{4096, 320, 2880},  {4096, 320, 320},  {1024, 640, 5760}, {77, 768, 768},
                {256, 1280, 11520}, {4096, 1280, 320}, {64 * 64, 64, 40}};
  std::mt19937 g(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto s : shapes) {
    std::vector<float> A((size_t)s.M * s.K), B((size_t)s.N * s.K), C((size_t)s.M * s.N);
    for (auto& x : A) x = u(g);
    for (auto& x : B) x = u(g);
    auto t = [&](auto f) {
      f();
      auto a = std::chrono::steady_clock::now();
      int r = 5;
      for (int i = 0; i < r; i++) f();
      auto b = std::chrono::steady_clock::now();
      return std::chrono::duration<double>(b - a).count() / r;
    };
    double to = t([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.M, s.N, s.K, 1.f, A.data(), s.K,
                  B.data(), s.K, 0.f, C.data(), s.N);
    });
    double td = t([&] {
      dnnl_sgemm('N', 'T', s.M, s.N, s.K, 1.f, A.data(), s.K, B.data(), s.K, 0.f, C.data(), s.N);
    });
    double fl = 2.0 * s.M * s.N * s.K;
    printf("M=%d N=%d K=%d openblas %.1f GF/s  dnnl %.1f GF/s\n", s.M, s.N, s.K, fl / to / 1e9,
           fl / td / 1e9);
  }
}
