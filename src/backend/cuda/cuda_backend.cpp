// The CUDA Backend: dispatch to the op files, with per-op-kind event timing and
// FLOP counting for kiln bench.
#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <map>
#include <vector>

#include "backend/cuda/context.h"
#include "backend/cuda/ops.h"

namespace kiln::cuda {
namespace {

struct Record {
  std::string op;
  cudaEvent_t begin, end;
  double flops;
};

struct Profiler {
  bool on = false;
  bool by_shape = false;
  bool in_graph = false;  // recording into a graph being captured
  double flops = 0.0;     // always counted
  std::vector<Record> records;
  std::vector<cudaEvent_t> spare;
  std::map<std::string, OpTime> totals;

  cudaEvent_t event() {
    if (!spare.empty()) {
      cudaEvent_t e = spare.back();
      spare.pop_back();
      return e;
    }
    cudaEvent_t e;
    CUDA_CHECK(cudaEventCreate(&e));
    return e;
  }

  // Folds finished records into the totals (waits for the stream).
  void collect() {
    if (records.empty()) return;
    CUDA_CHECK(cudaStreamSynchronize(stream()));
    for (const Record& r : records) {
      float ms = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, r.begin, r.end));
      OpTime& t = totals[r.op];
      t.op = r.op;
      ++t.calls;
      t.ms += ms;
      t.flops += r.flops;
      spare.push_back(r.begin);
      spare.push_back(r.end);
    }
    records.clear();
  }
};

Profiler& profiler() {
  static Profiler p;
  return p;
}

// Brackets one backend call with events while profiling is on; `shape` names
// the call's shapes when the profile is kept per shape.
class OpScope {
 public:
  template <class Shape>
  OpScope(const char* op, const Shape& shape) : op_(op) {
    Profiler& p = profiler();
    active_ = p.on && (!context().capturing || p.in_graph);
    if (!active_) return;
    if (p.by_shape) op_ += " " + shape();
    flops_before_ = p.flops;
    begin_ = p.event();
    record(begin_);
  }
  ~OpScope() noexcept(false) {
    if (!active_) return;
    Profiler& p = profiler();
    cudaEvent_t end = p.event();
    record(end);
    p.records.push_back({op_, begin_, end, p.flops - flops_before_});
  }
  // In a capture, an event node that takes a timestamp on every replay.
  static void record(cudaEvent_t e) {
    if (context().capturing)
      CUDA_CHECK(cudaEventRecordWithFlags(e, stream(), cudaEventRecordExternal));
    else
      CUDA_CHECK(cudaEventRecord(e, stream()));
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  std::string op_;
  bool active_ = false;
  double flops_before_ = 0.0;
  cudaEvent_t begin_ = nullptr;
};

const char* conv_name(const Conv2dArgs& a) {
  if (a.model_flops > 0.0) return "conv2d 3x3 upsample (phases)";
  if (a.weight.dim(1) == 1 && a.weight.dim(2) == 1) return "conv2d 1x1";
  return a.stride == 1 ? "conv2d 3x3" : "conv2d 3x3 s2";
}

std::string dims(const Tensor& t) {
  std::string s;
  for (int i = 0; i < t.ndim(); ++i) s += (i ? "x" : "") + std::to_string(t.dim(i));
  return s;
}

class CudaBackend final : public Backend {
 public:
  Device device() const override { return Device::CUDA; }
  DType activation_dtype() const override { return DType::F16; }

  void linear(const LinearArgs& a) override {
    OpScope s("linear", [&] { return str(a.x.dim(0), "x", a.weight.dim(0), "x", a.x.dim(1)); });
    cuda::linear(a);
  }
  void conv2d(const Conv2dArgs& a) override {
    OpScope s(conv_name(a), [&] { return dims(a.x) + "->" + std::to_string(a.weight.dim(0)); });
    cuda::conv2d(a);
  }
  void group_norm(const GroupNormArgs& a) override {
    OpScope s("group_norm", [&] { return dims(a.x); });
    cuda::group_norm(a);
  }
  void layer_norm(const LayerNormArgs& a) override {
    OpScope s("layer_norm", [&] { return dims(a.x); });
    cuda::layer_norm(a);
  }
  bool add_layer_norm(const AddLayerNormArgs& a) override {
    OpScope s("add+layer_norm", [&] { return dims(a.x); });
    return cuda::add_layer_norm(a);
  }
  void attention(const AttentionArgs& a) override {
    OpScope s("attention", [&] {
      return str("b", a.q.dim(0), " h", a.heads, " ", a.q.dim(1), "x", a.k.dim(1), " d",
                 a.features() / a.heads, a.width ? " packed" : "", a.causal ? " causal" : "");
    });
    cuda::attention(a);
  }
  void binary(const BinaryArgs& a) override {
    OpScope s(a.op == BinaryOp::Add ? "add" : "mul", [&] { return dims(a.a) + " " + dims(a.b); });
    cuda::binary(a);
  }
  void unary(const UnaryArgs& a) override {
    OpScope s("unary", [&] { return dims(a.x); });
    cuda::unary(a);
  }
  void linear_combination(const LinearCombinationArgs& a) override {
    OpScope s("linear_combination", [&] { return dims(a.out); });
    cuda::linear_combination(a);
  }
  void geglu(const GegluArgs& a) override {
    OpScope s("geglu", [&] { return dims(a.x); });
    cuda::geglu(a);
  }
  bool linear_geglu(const LinearGegluArgs& a) override {
    if (!options().geglu_fused || !linear_geglu_fused_available()) return false;
    OpScope s("linear_geglu",
              [&] { return str(a.x.dim(0), "x", a.weight.dim(0), "x", a.x.dim(1)); });
    return cuda::linear_geglu(a);
  }
  void concat(const ConcatArgs& a) override {
    OpScope s("concat", [&] { return dims(a.out); });
    cuda::concat(a);
  }
  void upsample_nearest(const UpsampleArgs& a) override {
    OpScope s("upsample_nearest", [&] { return dims(a.out); });
    cuda::upsample_nearest(a);
  }
  void interleave_phases(const InterleavePhasesArgs& a) override {
    OpScope s("interleave_phases", [&] { return dims(a.out); });
    cuda::interleave_phases(a);
  }
  bool interleave_phases_group_norm(const InterleaveGroupNormArgs& a) override {
    if (!options().interleave_norm_fused) return false;
    OpScope s("interleave_phases+group_norm", [&] { return dims(a.out); });
    return cuda::interleave_phases_group_norm(a);
  }
  bool group_norm_conv2d(const GroupNormConv2dArgs& a) override {
    if (!options().norm_conv_fused) return false;
    // Decided (the convolution's plan made) before the op is timed.
    const int form = cuda::folded_norm_form(a);
    if (form < 0) return false;
    OpScope s("group_norm+conv2d 3x3",
              [&] { return dims(a.conv.x) + "->" + std::to_string(a.conv.weight.dim(0)); });
    cuda::group_norm_conv2d(a, form);
    return true;
  }
  void timestep_embedding(const TimestepEmbeddingArgs& a) override {
    OpScope s("timestep_embedding", [&] { return dims(a.out); });
    cuda::timestep_embedding(a);
  }
  void embedding(const EmbeddingArgs& a) override {
    OpScope s("embedding", [&] { return dims(a.out); });
    cuda::embedding(a);
  }
  void slice_last(const SliceLastArgs& a) override {
    OpScope s("slice_last", [&] { return dims(a.out); });
    cuda::slice_last(a);
  }
  void cast(const CastArgs& a) override {
    OpScope s("cast", [&] { return dims(a.x); });
    cuda::cast(a);
  }
};

}  // namespace

Backend& backend() {
  static CudaBackend instance;
  return instance;
}

void count_flops(double flops) {
  profiler().flops += flops;
}

double flop_count() {
  return profiler().flops;
}

void reset_flop_count() {
  profiler().flops = 0.0;
}

void set_op_profiling(bool on, bool by_shape) {
  profiler().collect();
  profiler().on = on;
  profiler().by_shape = by_shape;
}

std::vector<OpTime> op_profile() {
  Profiler& p = profiler();
  p.collect();
  std::vector<OpTime> out;
  for (const auto& [name, t] : p.totals) out.push_back(t);
  std::sort(out.begin(), out.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
  return out;
}

void profile_capture(bool on) {
  profiler().on = on;
  profiler().in_graph = on;
}

void reset_op_profile() {
  // Pending events are dropped unread: some may never have been recorded (a
  // capture that failed).
  Profiler& p = profiler();
  (void)cudaStreamSynchronize(stream());
  for (const Record& r : p.records) {
    p.spare.push_back(r.begin);
    p.spare.push_back(r.end);
  }
  p.records.clear();
  p.totals.clear();
}

}  // namespace kiln::cuda
