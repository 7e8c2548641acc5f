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
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
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
  bool wide;                                    // Options::GemmSearch::Wide
  auto tie() const {
    return std::tie(m, n, k, lda, ldb, ldc, dtype, epilogue, residual, align_a, align_b, align_c,
                    align_d, step_timed, wide);
  }
  bool operator<(const Key& o) const { return tie() < o.tie(); }
  // Every field, for the plan cache.
  std::string name() const {
    return str("m", m, " n", n, " k", k, " ld", lda, ",", ldb, ",", ldc, " ", dtype_name(dtype),
               " epilogue", int(epilogue), residual ? " residual" : "", " align", align_a, ",",
               align_b, ",", align_c, ",", align_d, step_timed ? " step-timed" : "",
               wide ? " wide" : "");
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

cublasStatus_t try_run(const Plan& plan, const GemmParams& p, bool residual_in_c) {
  const float alpha = 1.0f, beta = residual_in_c ? 1.0f : 0.0f;
  Context& c = context();
  // The bias pointer is an attribute of the descriptor; set it for this call.
  if (p.bias)
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias,
                                                sizeof(p.bias)));
  const void* cmat = residual_in_c ? p.residual : p.c;
  return cublasLtMatmul(c.lt, plan.op, &alpha, p.b, plan.weight, p.a, plan.act, &beta, cmat,
                        plan.out, p.c, plan.out, &plan.algo, c.gemm_workspace,
                        c.gemm_workspace_bytes, c.stream);
}

void run(const Plan& plan, const GemmParams& p, bool residual_in_c) {
  CUBLAS_CHECK(try_run(plan, p, residual_in_c));
}

template <typename T>
T config(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr) {
  T value{};
  size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &value, sizeof(value), &written) !=
      CUBLAS_STATUS_SUCCESS)
    return T{};
  return value;
}

template <typename T>
bool set_config(cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr, T value) {
  return cublasLtMatmulAlgoConfigSetAttribute(&algo, attr, &value, sizeof(value)) ==
         CUBLAS_STATUS_SUCCESS;
}

template <typename T>
T capability(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoCapAttributes_t attr) {
  T value{};
  size_t written = 0;
  if (cublasLtMatmulAlgoCapGetAttribute(&algo, attr, &value, sizeof(value), &written) !=
      CUBLAS_STATUS_SUCCESS)
    return T{};
  return value;
}

// What makes two configured algorithms the same kernel and launch.
auto config_tuple(const cublasLtMatmulAlgo_t& a) {
  return std::make_tuple(config<int32_t>(a, CUBLASLT_ALGO_CONFIG_ID),
                         config<uint32_t>(a, CUBLASLT_ALGO_CONFIG_TILE_ID),
                         config<int32_t>(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
                         config<uint32_t>(a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
                         config<uint32_t>(a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
                         config<uint32_t>(a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION),
                         config<uint32_t>(a, CUBLASLT_ALGO_CONFIG_STAGES_ID),
                         config<uint16_t>(a, CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID),
                         config<uint16_t>(a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID));
}

struct Candidate {
  cublasLtMatmulAlgo_t algo;
  size_t workspace;
};

cublasLtMatmulPreference_t preference(const Key& key, cublasLtMatmulSearch_t mode) {
  cublasLtMatmulPreference_t pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = context().gemm_workspace_bytes;
  const uint32_t search = mode;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_SEARCH_MODE, &search,
                                                    sizeof(search)));
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
  return pref;
}

// The heuristic's answers for `pref`, those that can run, appended to `out`.
void ask_heuristic(const Plan& plan, cublasLtMatmulPreference_t pref, int count,
                   cublasLtMatmulHeuristicResult_t* results, std::vector<Candidate>& out) {
  int found = 0;
  if (cublasLtMatmulAlgoGetHeuristic(context().lt, plan.op, plan.weight, plan.act, plan.out,
                                     plan.out, pref, count, results,
                                     &found) != CUBLAS_STATUS_SUCCESS)
    return;
  for (int i = 0; i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS)
      out.push_back({results[i].algo, results[i].workspaceSize});
}

// Whether a configured algorithm runs on these descriptors, within the workspace and the
// operands' alignment; its workspace when it does.
std::optional<size_t> check(const Plan& plan, const Key& key, const cublasLtMatmulAlgo_t& algo) {
  cublasLtMatmulHeuristicResult_t result{};
  if (cublasLtMatmulAlgoCheck(context().lt, plan.op, plan.weight, plan.act, plan.out, plan.out,
                              &algo, &result) != CUBLAS_STATUS_SUCCESS ||
      result.state != CUBLAS_STATUS_SUCCESS ||
      result.workspaceSize > context().gemm_workspace_bytes)
    return std::nullopt;
  if (capability<uint32_t>(algo, CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_A_BYTES) > key.align_b ||
      capability<uint32_t>(algo, CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_B_BYTES) > key.align_a ||
      capability<uint32_t>(algo, CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_C_BYTES) > key.align_c ||
      capability<uint32_t>(algo, CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_D_BYTES) > key.align_d)
    return std::nullopt;
  return result.workspaceSize;
}

// Split-K variants of `seed` (f32 partial sums) that pass check(), appended to `out`:
// each of `splits` while K / split stays at least `min_part`; none where the seed
// cannot split or is split already.
void add_split_variants(const Plan& plan, const Key& key, const cublasLtMatmulAlgo_t& seed,
                        std::initializer_list<int32_t> splits, int64_t min_part,
                        std::vector<Candidate>& out) {
  if (!capability<int32_t>(seed, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT) ||
      !(capability<uint32_t>(seed, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK) &
        CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE) ||
      config<int32_t>(seed, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) > 1)
    return;
  for (int32_t split : splits) {
    if (key.k / split < min_part) break;
    cublasLtMatmulAlgo_t a = seed;
    if (set_config(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, split) &&
        set_config(a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
                   uint32_t(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE)))
      if (const auto workspace = check(plan, key, a)) out.push_back({a, *workspace});
  }
}

// What gets timed. The default: the heuristic's 16 best fits. The wide search
// (Options::GemmSearch::Wide) adds, for every algorithm id cuBLASLt has for these
// types, the heuristic's best configurations of that id, and variants of the best fits
// that the heuristic does not propose: split-K with f32 partial sums (for shapes with
// too few output tiles to fill the GPU), CTA swizzling flipped, other thread-block
// cluster shapes. The same kernel and launch is kept once.
std::vector<Candidate> candidates(const Plan& plan, const Key& key) {
  constexpr int kBestFits = 64, kPerAlgoId = 8, kVaried = 8, kMaxIds = 128;
  cublasLtMatmulHeuristicResult_t results[kBestFits];
  std::vector<Candidate> out;
  cublasLtMatmulPreference_t pref = preference(key, CUBLASLT_SEARCH_BEST_FIT);
  ask_heuristic(plan, pref, key.wide ? kBestFits : kCandidates, results, out);
  CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  if (!key.wide || out.empty()) return out;

  const cudaDataType_t type = cuda_type(key.dtype);
  int ids[kMaxIds];
  int n_ids = 0;
  if (cublasLtMatmulAlgoGetIds(context().lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, type, type, type, type,
                               kMaxIds, ids, &n_ids) == CUBLAS_STATUS_SUCCESS) {
    pref = preference(key, CUBLASLT_SEARCH_LIMITED_BY_ALGO_ID);
    for (int i = 0; i < n_ids; ++i) {
      for (int r = 0; r < kPerAlgoId; ++r) {
        results[r] = {};
        cublasLtMatmulAlgoInit(context().lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, type, type, type, type,
                               ids[i], &results[r].algo);
      }
      ask_heuristic(plan, pref, kPerAlgoId, results, out);
    }
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  }

  const size_t varied = std::min<size_t>(out.size(), kVaried);
  for (size_t i = 0; i < varied; ++i) {
    const cublasLtMatmulAlgo_t seed = out[i].algo;  // a copy: out grows below
    add_split_variants(plan, key, seed, {2, 3, 4}, 256, out);
    std::vector<cublasLtMatmulAlgo_t> variants;
    if (capability<uint32_t>(seed, CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT)) {
      cublasLtMatmulAlgo_t a = seed;
      if (set_config(a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING,
                     config<uint32_t>(seed, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING) ? 0u : 1u))
        variants.push_back(a);
    }
    for (uint16_t cluster : {CUBLASLT_CLUSTER_SHAPE_1x1x1, CUBLASLT_CLUSTER_SHAPE_2x1x1,
                             CUBLASLT_CLUSTER_SHAPE_1x2x1, CUBLASLT_CLUSTER_SHAPE_2x2x1}) {
      cublasLtMatmulAlgo_t a = seed;
      if (config<uint16_t>(seed, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID) != cluster &&
          set_config(a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, cluster))
        variants.push_back(a);
    }
    for (const cublasLtMatmulAlgo_t& a : variants)
      if (const auto workspace = check(plan, key, a)) out.push_back({a, *workspace});
  }

  std::vector<Candidate> unique;
  std::set<decltype(config_tuple(out[0].algo))> seen;
  for (const Candidate& c : out)
    if (seen.insert(config_tuple(c.algo)).second) unique.push_back(c);
  return unique;
}

// The index of the fastest candidate. Each is run once untimed, then timed over three
// runs (PlanTimer: back to back, or as inside a step). With the wide search the best
// six are timed again in three interleaved rounds: a GEMM of a few microseconds varies
// from one run to the next by about as much as its candidates differ.
size_t fastest(Plan& plan, const Key& key, const GemmParams& p,
               const std::vector<Candidate>& found) {
  PlanTimer timer(key.step_timed);
  // The activations (K × M, column-major): what a step's previous op left in L2.
  const size_t a_bytes = size_t((key.m - 1) * key.lda + key.k) * dtype_size(key.dtype);
  const auto time = [&](size_t i, int reps) {
    plan.algo = found[i].algo;
    if (try_run(plan, p, key.residual) != CUBLAS_STATUS_SUCCESS)  // and a warm-up
      return std::numeric_limits<float>::infinity();
    return timer.time([&] { run(plan, p, key.residual); }, p.a, a_bytes, reps);
  };
  std::vector<std::pair<float, size_t>> ms;
  for (size_t i = 0; i < found.size(); ++i) ms.emplace_back(time(i, 3), i);
  std::stable_sort(ms.begin(), ms.end());
  if (!key.wide || ms.size() < 2) return ms[0].second;
  constexpr size_t kFinalists = 6;
  const size_t finalists = std::min(kFinalists, ms.size());
  std::vector<float> best(finalists, std::numeric_limits<float>::infinity());
  for (int round = 0; round < 3; ++round)
    for (size_t f = 0; f < finalists; ++f) best[f] = std::min(best[f], time(ms[f].second, 5));
  const size_t winner = size_t(std::min_element(best.begin(), best.end()) - best.begin());
  if (std::getenv("KILN_GEMM_LOG")) {
    float first_fits = std::numeric_limits<float>::infinity();
    for (const auto& [t, i] : ms)
      if (i < size_t(kCandidates)) first_fits = std::min(first_fits, t);
    const auto [id, tile, split, reduction, swizzle, custom, stages, inner, cluster] =
        config_tuple(found[ms[winner].second].algo);
    std::fprintf(stderr,
                 "kiln gemm: m%lld n%lld k%lld%s: %zu candidates; best of the first %d %.2f us, "
                 "chosen #%zu %.2f us (id %d tile %u stages %u split %d/%u swizzle %u custom %u "
                 "cluster %u)\n",
                 (long long)p.m, (long long)p.n, (long long)p.k, timer.as_in_step() ? " step" : "",
                 found.size(), kCandidates, 1e3f * first_fits, ms[winner].second,
                 1e3f * best[winner], id, tile, stages, split, reduction, swizzle, custom,
                 unsigned(cluster));
  }
  return ms[winner].second;
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

  const std::vector<Candidate> found = candidates(plan, key);
  if (found.empty()) {  // the caller falls back
    record_gemm_plan(name, {});
    return plan;
  }

  // Time the candidates on the real operands once; a graph being captured
  // cannot time, so it takes the heuristic's first choice.
  size_t best = 0;
  const bool timed = found.size() == 1 || !c.capturing;
  if (found.size() > 1 && timed) best = fastest(plan, key, p, found);
  plan.algo = found[best].algo;
  plan.workspace = found[best].workspace;
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
          options().plan_timing == Options::PlanTiming::Step,
          options().gemm_search == Options::GemmSearch::Wide};
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
