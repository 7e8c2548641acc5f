// GEMMs through cuBLASLt: row-major C[M, N] = act(A[M, K] · B[N, K]^T + bias)
// (+ residual), f16/bf16 with f32 accumulation (f32 stays f32, no TF32).
//
// cuBLASLt is column-major, so the product is computed as C^T = B · A^T: the
// weight is matrix "A" (transposed), the activations matrix "B", and C^T
// column-major is C row-major. The bias then runs along D's rows, which is what
// cuBLASLt's BIAS epilogue adds. A residual rides in as matrix C with beta = 1
// (when no activation follows, since cuBLASLt would apply it to the sum); the
// tanh GELU is fused; the other activations run in one extra pass.
//
// Each shape's descriptors and algorithm are made once: the heuristic's top
// candidates are timed on the first call and the fastest kept (the plan). The
// choice is also kept in the plan cache (plan_cache.h), so that a later process
// takes it after cuBLASLt confirms that it still applies.
#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "backend/cuda/context.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/plan_cache.h"

namespace kiln::cuda {
namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::F16:
      return CUDA_R_16F;
    case DType::BF16:
      return CUDA_R_16BF;
    default:
      KILN_FAIL("GEMM on ", dtype_name(t));
  }
}

// Largest power of two (up to 256) dividing the address: what cuBLASLt's
// alignment preferences ask about.
uint32_t alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && (a & (align - 1))) align /= 2;
  return align;
}

struct Key {
  int64_t m, n, k, lda, ldb, ldc;
  DType dtype;
  cublasLtEpilogue_t epilogue;
  bool residual;
  uint32_t align_a, align_b, align_c, align_d;  // C is the residual when one rides in
  bool step_timed;                              // Options::PlanTiming::Step
  auto tie() const {
    return std::tie(m, n, k, lda, ldb, ldc, dtype, epilogue, residual, align_a, align_b, align_c,
                    align_d, step_timed);
  }
  bool operator<(const Key& o) const { return tie() < o.tie(); }
  // Every field, for the plan cache.
  std::string name() const {
    return str("m", m, " n", n, " k", k, " ld", lda, ",", ldb, ",", ldc, " ", dtype_name(dtype),
               " epilogue", int(epilogue), residual ? " residual" : "", " align", align_a, ",",
               align_b, ",", align_c, ",", align_d, step_timed ? " step-timed" : "");
  }
};

static_assert(sizeof(cublasLtMatmulAlgo_t) == sizeof(plans::GemmChoice::algo),
              "the plan cache keeps cublasLtMatmulAlgo_t's bytes");

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t weight = nullptr, act = nullptr, out = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  bool valid = false;  // false: no algorithm for this epilogue
};

std::mutex g_mu;
std::map<Key, Plan> g_plans;

constexpr int kCandidates = 16;

void run(const Plan& plan, const GemmParams& p, bool residual_in_c) {
  const float alpha = 1.0f, beta = residual_in_c ? 1.0f : 0.0f;
  Context& c = context();
  // The bias pointer is an attribute of the descriptor; set it for this call.
  if (p.bias)
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias,
                                                sizeof(p.bias)));
  const void* cmat = residual_in_c ? p.residual : p.c;
  CUBLAS_CHECK(cublasLtMatmul(c.lt, plan.op, &alpha, p.b, plan.weight, p.a, plan.act, &beta, cmat,
                              plan.out, p.c, plan.out, &plan.algo, c.gemm_workspace,
                              c.gemm_workspace_bytes, c.stream));
}

Plan make_plan(const Key& key, const GemmParams& p) {
  Context& c = context();
  Plan plan;
  const cudaDataType_t type = cuda_type(key.dtype);
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
  CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans,
                                              sizeof(no_trans)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &key.epilogue,
                                              sizeof(key.epilogue)));
  // weight: stored K × N column-major (row-major [N, K]); activations K × M; out N × M.
  CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan.weight, type, uint64_t(key.k), uint64_t(key.n), key.ldb));
  CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan.act, type, uint64_t(key.k), uint64_t(key.m), key.lda));
  CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan.out, type, uint64_t(key.n), uint64_t(key.m), key.ldc));

  if (p.bias) {
    const void* bias = p.bias;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                sizeof(bias)));
  }

  const std::string name = key.name();
  if (const auto stored = stored_gemm_plan(name)) {
    // The stored algorithm, if cuBLASLt still accepts it for these descriptors
    // and this workspace; otherwise it is timed again.
    std::memcpy(&plan.algo, stored->algo.data(), sizeof(plan.algo));
    cublasLtMatmulHeuristicResult_t check{};
    if (!stored->valid ||
        (cublasLtMatmulAlgoCheck(c.lt, plan.op, plan.weight, plan.act, plan.out, plan.out,
                                 &plan.algo, &check) == CUBLAS_STATUS_SUCCESS &&
         check.workspaceSize <= c.gemm_workspace_bytes)) {
      plan.workspace = check.workspaceSize;
      plan.valid = stored->valid;
      count_reused_plan();
      return plan;
    }
  }

  cublasLtMatmulPreference_t pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = c.gemm_workspace_bytes;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ws, sizeof(ws)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align_b, sizeof(uint32_t)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align_a, sizeof(uint32_t)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align_c, sizeof(uint32_t)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align_d, sizeof(uint32_t)));
  cublasLtMatmulHeuristicResult_t results[kCandidates];
  int found = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(
      c.lt, plan.op, plan.weight, plan.act, plan.out, plan.out, pref, kCandidates, results, &found);
  CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  if (s != CUBLAS_STATUS_SUCCESS || found == 0) {  // the caller falls back
    record_gemm_plan(name, {});
    return plan;
  }

  // Time the candidates on the real operands once; a graph being captured
  // cannot time, so it takes the heuristic's first choice.
  int best = 0;
  const bool timed = found == 1 || !c.capturing;
  if (found > 1 && timed) {
    PlanTimer timer(key.step_timed);
    float best_ms = 0.0f;
    // The activations (K × M, column-major): what a step's previous op left in L2.
    const size_t a_bytes = size_t((key.m - 1) * key.lda + key.k) * dtype_size(key.dtype);
    for (int i = 0; i < found; ++i) {
      if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
      plan.algo = results[i].algo;
      run(plan, p, key.residual);  // warm-up
      const float ms = timer.time([&] { run(plan, p, key.residual); }, p.a, a_bytes, 3);
      if (i == 0 || ms < best_ms) {
        best_ms = ms;
        best = i;
      }
    }
  }
  plan.algo = results[best].algo;
  plan.workspace = results[best].workspaceSize;
  plan.valid = true;
  if (timed) {
    plans::GemmChoice choice{true, {}, plan.workspace};
    std::memcpy(choice.algo.data(), &plan.algo, sizeof(plan.algo));
    record_gemm_plan(name, choice);
  }
  return plan;
}

const Plan& plan_for(const Key& key, const GemmParams& p) {
  auto it = g_plans.find(key);
  if (it == g_plans.end()) it = g_plans.emplace(key, make_plan(key, p)).first;
  return it->second;
}

}  // namespace

void forget_gemm_plans() {
  std::lock_guard<std::mutex> lock(g_mu);
  for (auto& [key, plan] : g_plans) {
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(plan.op));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan.weight));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan.act));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan.out));
  }
  g_plans.clear();
}

void gemm_nt(const GemmParams& p) {
  if (p.m == 0 || p.n == 0) return;
  KILN_CHECK(p.k > 0, "GEMM with K = 0");
  count_flops(2.0 * double(p.m) * double(p.n) * double(p.k));
  const bool tanh_gelu = p.act == Activation::GELUTanh;
  const bool fused_act = p.act == Activation::None || tanh_gelu;
  const bool residual_in_c = p.residual && p.act == Activation::None;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  if (tanh_gelu)
    epilogue = p.bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  else if (p.bias)
    epilogue = CUBLASLT_EPILOGUE_BIAS;

  std::lock_guard<std::mutex> lock(g_mu);
  const uint32_t align_d = alignment(p.c);
  Key key{p.m,
          p.n,
          p.k,
          p.lda,
          p.ldb,
          p.ldc,
          p.dtype,
          epilogue,
          residual_in_c,
          alignment(p.a),
          alignment(p.b),
          residual_in_c ? std::min(align_d, alignment(p.residual)) : align_d,
          align_d,
          options().plan_timing == Options::PlanTiming::Step};
  const Plan* plan = &plan_for(key, p);
  if (plan->valid) {
    run(*plan, p, residual_in_c);
    if (!fused_act || (p.residual && !residual_in_c))
      bias_act_residual(p.c, nullptr, residual_in_c ? nullptr : p.residual, p.m, p.n,
                        fused_act ? Activation::None : p.act, p.dtype);
    return;
  }
  // No algorithm with this epilogue (rare shapes): a plain product, then one pass.
  key.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  key.residual = false;
  key.align_c = align_d;
  GemmParams plain = p;
  plain.bias = nullptr;
  plain.residual = nullptr;
  plan = &plan_for(key, plain);
  if (plan->valid) {
    run(*plan, plain, false);
  } else {
    // Nor without it: cuBLAS's own GEMM, which takes any shape.
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t type = cuda_type(p.dtype);
    CUBLAS_CHECK(cublasGemmEx(context().blas, CUBLAS_OP_T, CUBLAS_OP_N, int(p.n), int(p.m),
                              int(p.k), &alpha, p.b, type, int(p.ldb), p.a, type, int(p.lda), &beta,
                              p.c, type, int(p.ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  bias_act_residual(p.c, p.bias, p.residual, p.m, p.n, p.act, p.dtype);
}

void linear(const LinearArgs& a) {
  GemmParams p;
  p.m = a.x.dim(0);
  p.k = a.x.dim(1);
  p.n = a.weight.dim(0);
  p.a = a.x.raw();
  p.lda = p.k;
  p.b = a.weight.raw();
  p.ldb = p.k;
  p.c = a.out.raw();
  p.ldc = p.n;
  p.bias = a.bias.defined() ? a.bias.raw() : nullptr;
  p.residual = a.residual.defined() ? a.residual.raw() : nullptr;
  p.act = a.act;
  p.dtype = a.x.dtype();
  gemm_nt(p);
}

#if !defined(KILN_WITH_CUTLASS)
// Built without CUTLASS (gemm_geglu.cu): the projection and the GEGLU stay two ops.
bool linear_geglu(const LinearGegluArgs&) {
  return false;
}
bool linear_geglu_fused_available() {
  return false;
}
size_t linear_geglu_fused_calls() {
  return 0;
}
#endif

}  // namespace kiln::cuda
