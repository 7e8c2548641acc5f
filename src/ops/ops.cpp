#include "ops/ops.h"

#include <cstring>

namespace kiln::ops {
namespace {

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  KILN_CHECK(a.device() == b.device(), op, ": operands on different devices: ", a.describe(),
             " and ", b.describe());
}

void check_float_like(const Tensor& ref, const Tensor& t, const char* op, const char* what) {
  KILN_CHECK(t.defined(), op, ": ", what, " is missing");
  check_same_device(ref, t, op);
  KILN_CHECK(t.dtype() == ref.dtype(), op, ": ", what, " is ", t.describe(), ", expected ",
             dtype_name(ref.dtype()));
}

void check_optional_vector(const Tensor& ref, const Tensor& t, int64_t n, const char* op,
                           const char* what) {
  if (!t.defined()) return;
  check_float_like(ref, t, op, what);
  KILN_CHECK(t.numel() == n, op, ": ", what, " has ", t.numel(), " elements, expected ", n);
}

Tensor like(const Tensor& x, Shape shape) {
  return Tensor::empty(shape, x.dtype(), x.device());
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Activation act,
              const Tensor& residual) {
  KILN_CHECK(x.ndim() >= 1 && weight.ndim() == 2, "linear: x ", x.describe(), ", weight ",
             weight.describe());
  check_float_like(x, weight, "linear", "weight");
  const int64_t k = x.dim(-1), n = weight.dim(0);
  KILN_CHECK(weight.dim(1) == k, "linear: x has ", k, " features, weight expects ", weight.dim(1));
  check_optional_vector(x, bias, n, "linear", "bias");
  const Shape out_shape = x.shape().with_last(n);
  const int64_t m = x.numel() / std::max<int64_t>(k, 1);
  LinearArgs a;
  a.x = x.reshape({m, k});
  a.weight = weight;
  a.bias = bias;
  if (residual.defined()) {
    check_float_like(x, residual, "linear", "residual");
    KILN_CHECK(residual.shape() == out_shape, "linear: residual ", residual.shape().str(),
               " does not match output ", out_shape.str());
    a.residual = residual.reshape({m, n});
  }
  a.act = act;
  Tensor out = like(x, out_shape);
  a.out = out.reshape({m, n});
  backend_for(x.device()).linear(a);
  return out;
}

namespace {

// conv2d's arguments, checked, with the output allocated; model_flops as in Conv2dArgs.
Conv2dArgs conv2d_args(const Tensor& x, const Tensor& weight, const Tensor& bias, Conv2dGeometry g,
                       const Tensor& residual, double model_flops) {
  KILN_CHECK(x.ndim() == 4 && weight.ndim() == 4, "conv2d: x ", x.describe(), ", weight ",
             weight.describe(), " (expected NHWC input and OHWI weight)");
  check_float_like(x, weight, "conv2d", "weight");
  KILN_CHECK(weight.dim(3) == x.dim(3), "conv2d: input has ", x.dim(3),
             " channels, weight expects ", weight.dim(3));
  KILN_CHECK(
      g.stride >= 1 && g.pad_top >= 0 && g.pad_left >= 0 && g.pad_bottom >= 0 && g.pad_right >= 0,
      "conv2d: bad geometry");
  const int64_t kh = weight.dim(1), kw = weight.dim(2), o = weight.dim(0);
  const int64_t hp = x.dim(1) + g.pad_top + g.pad_bottom, wp = x.dim(2) + g.pad_left + g.pad_right;
  KILN_CHECK(hp >= kh && wp >= kw, "conv2d: input ", x.shape().str(), " smaller than kernel");
  const int64_t ho = (hp - kh) / g.stride + 1, wo = (wp - kw) / g.stride + 1;
  check_optional_vector(x, bias, o, "conv2d", "bias");
  Conv2dArgs a;
  a.x = x;
  a.weight = weight;
  a.bias = bias;
  a.stride = g.stride;
  a.pad_top = g.pad_top;
  a.pad_left = g.pad_left;
  a.pad_bottom = g.pad_bottom;
  a.pad_right = g.pad_right;
  a.out = like(x, {x.dim(0), ho, wo, o});
  if (residual.defined()) {
    check_float_like(x, residual, "conv2d", "residual");
    KILN_CHECK(residual.shape() == a.out.shape(), "conv2d: residual ", residual.shape().str(),
               " does not match output ", a.out.shape().str());
    a.residual = residual;
  }
  a.model_flops = model_flops;
  return a;
}

// ops::conv2d, with the FLOPs of the model's form where this is another (Conv2dArgs).
Tensor conv2d_counted(const Tensor& x, const Tensor& weight, const Tensor& bias, Conv2dGeometry g,
                      const Tensor& residual, double model_flops) {
  const Conv2dArgs a = conv2d_args(x, weight, bias, g, residual, model_flops);
  backend_for(x.device()).conv2d(a);
  return a.out;
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Conv2dGeometry g,
              const Tensor& residual) {
  return conv2d_counted(x, weight, bias, g, residual, 0.0);
}

namespace {

// ops::group_norm's arguments, checked, but for the output.
GroupNormArgs group_norm_args(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups,
                              float eps, Activation act, const Tensor& addend, int64_t addend_col) {
  KILN_CHECK(x.ndim() >= 2, "group_norm: x ", x.describe());
  const int64_t c = x.dim(-1), b = x.dim(0);
  KILN_CHECK(groups > 0 && c % groups == 0, "group_norm: ", c, " channels in ", groups, " groups");
  check_optional_vector(x, gamma, c, "group_norm", "gamma");
  check_optional_vector(x, beta, c, "group_norm", "beta");
  KILN_CHECK(gamma.defined() && beta.defined(), "group_norm: gamma and beta are required");
  GroupNormArgs a;
  a.x = x.reshape({b, x.numel() / std::max<int64_t>(b * c, 1), c});
  a.gamma = gamma;
  a.beta = beta;
  a.groups = groups;
  a.eps = eps;
  a.act = act;
  if (addend.defined()) {
    check_float_like(x, addend, "group_norm", "addend");
    if (addend_col < 0) {
      KILN_CHECK(addend.numel() == b * c && addend.dim(0) == b && addend.dim(-1) == c,
                 "group_norm: addend ", addend.describe(), ", expected [", b, ", ", c, "]");
      a.addend = addend.reshape({b, c});
    } else {
      KILN_CHECK(addend.ndim() == 2 && addend.dim(0) == b && addend_col + c <= addend.dim(1),
                 "group_norm: addend ", addend.describe(), " from column ", addend_col,
                 ": expected [", b, ", ", addend_col + c, "] or wider");
      a.addend = addend;
      a.addend_col = addend_col;
    }
  }
  return a;
}

}  // namespace

Tensor group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
                  Activation act, const Tensor& addend, int64_t addend_col) {
  GroupNormArgs a = group_norm_args(x, gamma, beta, groups, eps, act, addend, addend_col);
  Tensor out = like(x, x.shape());
  a.out = out.reshape(a.x.shape());
  backend_for(x.device()).group_norm(a);
  return out;
}

Tensor group_norm_conv2d(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups,
                         float eps, Activation act, const Tensor& weight, const Tensor& bias,
                         Conv2dGeometry g) {
  GroupNormConv2dArgs a;
  a.conv = conv2d_args(x, weight, bias, g, {}, 0.0);
  a.norm = group_norm_args(x, gamma, beta, groups, eps, act, {}, -1);
  Backend& backend = backend_for(x.device());
  if (backend.group_norm_conv2d(a)) return a.conv.out;
  const Tensor normed = like(x, x.shape());
  a.norm.out = normed.reshape(a.norm.x.shape());
  backend.group_norm(a.norm);
  a.conv.x = normed;
  backend.conv2d(a.conv);
  return a.conv.out;
}

Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps) {
  const int64_t c = x.dim(-1);
  check_optional_vector(x, gamma, c, "layer_norm", "gamma");
  check_optional_vector(x, beta, c, "layer_norm", "beta");
  KILN_CHECK(gamma.defined() && beta.defined(), "layer_norm: gamma and beta are required");
  LayerNormArgs a;
  a.x = x.reshape({x.numel() / std::max<int64_t>(c, 1), c});
  a.gamma = gamma;
  a.beta = beta;
  a.eps = eps;
  Tensor out = like(x, x.shape());
  a.out = out.reshape(a.x.shape());
  backend_for(x.device()).layer_norm(a);
  return out;
}

std::pair<Tensor, Tensor> add_layer_norm(const Tensor& x, const Tensor& residual,
                                         const Tensor& gamma, const Tensor& beta, float eps) {
  KILN_CHECK(x.shape() == residual.shape(), "add_layer_norm: x ", x.describe(), ", residual ",
             residual.describe(), " (expected the same shape)");
  check_float_like(x, residual, "add_layer_norm", "residual");
  const int64_t c = x.dim(-1);
  check_optional_vector(x, gamma, c, "add_layer_norm", "gamma");
  check_optional_vector(x, beta, c, "add_layer_norm", "beta");
  KILN_CHECK(gamma.defined() && beta.defined(), "add_layer_norm: gamma and beta are required");
  AddLayerNormArgs a;
  const Shape rows{x.numel() / std::max<int64_t>(c, 1), c};
  a.x = x.reshape(rows);
  a.residual = residual.reshape(rows);
  a.gamma = gamma;
  a.beta = beta;
  a.eps = eps;
  Tensor sum = like(x, x.shape());
  Tensor out = like(x, x.shape());
  a.sum = sum.reshape(rows);
  a.out = out.reshape(rows);
  if (backend_for(x.device()).add_layer_norm(a)) return {sum, out};
  sum = add(x, residual);
  return {sum, layer_norm(sum, gamma, beta, eps)};
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale,
                 bool causal) {
  KILN_CHECK(q.ndim() == 3 && k.ndim() == 3 && v.ndim() == 3, "attention: q ", q.describe(), ", k ",
             k.describe(), ", v ", v.describe(), " (expected [B, S, heads*D])");
  check_float_like(q, k, "attention", "k");
  check_float_like(q, v, "attention", "v");
  KILN_CHECK(heads > 0 && q.dim(2) % heads == 0, "attention: ", q.dim(2), " features in ", heads,
             " heads");
  KILN_CHECK(k.dim(0) == q.dim(0) && v.dim(0) == q.dim(0) && k.dim(1) == v.dim(1) &&
                 k.dim(2) == q.dim(2) && v.dim(2) == q.dim(2),
             "attention: q ", q.shape().str(), ", k ", k.shape().str(), ", v ", v.shape().str(),
             " do not agree");
  KILN_CHECK(!causal || k.dim(1) == q.dim(1), "attention: causal needs Sq == Sk");
  AttentionArgs a;
  a.q = q;
  a.k = k;
  a.v = v;
  a.heads = heads;
  a.scale = scale;
  a.causal = causal;
  a.out = like(q, q.shape());
  backend_for(q.device()).attention(a);
  return a.out;
}

Tensor attention_qkv(const Tensor& qkv, int heads, float scale) {
  KILN_CHECK(qkv.ndim() == 3 && qkv.dim(2) % 3 == 0, "attention_qkv: ", qkv.describe(),
             " (expected [B, S, 3*heads*D])");
  check_float_like(qkv, qkv, "attention_qkv", "qkv");
  const int64_t width = qkv.dim(2) / 3;
  KILN_CHECK(heads > 0 && width % heads == 0, "attention_qkv: ", width, " features in ", heads,
             " heads");
  AttentionArgs a;
  a.q = a.k = a.v = qkv;
  a.width = width;
  a.k_col = width;
  a.v_col = 2 * width;
  a.heads = heads;
  a.scale = scale;
  a.out = like(qkv, {qkv.dim(0), qkv.dim(1), width});
  backend_for(qkv.device()).attention(a);
  return a.out;
}

Tensor attention_kv(const Tensor& q, const Tensor& kv, int heads, float scale, int64_t kv_col) {
  KILN_CHECK(q.ndim() == 3 && kv.ndim() == 3, "attention_kv: q ", q.describe(), ", kv ",
             kv.describe(), " (expected [B, S, heads*D] and [B, Sk, 2*heads*D])");
  check_float_like(q, kv, "attention_kv", "kv");
  KILN_CHECK(heads > 0 && q.dim(2) % heads == 0, "attention_kv: ", q.dim(2), " features in ", heads,
             " heads");
  KILN_CHECK(kv.dim(0) == q.dim(0) && kv_col >= 0 && kv_col + 2 * q.dim(2) <= kv.dim(2),
             "attention_kv: q ", q.shape().str(), " and kv ", kv.shape().str(), " from column ",
             kv_col, " do not agree");
  AttentionArgs a;
  a.q = q;
  a.k = a.v = kv;
  a.width = q.dim(2);
  a.k_col = kv_col;
  a.v_col = kv_col + q.dim(2);
  a.heads = heads;
  a.scale = scale;
  a.out = like(q, q.shape());
  backend_for(q.device()).attention(a);
  return a.out;
}

static Tensor binary(const Tensor& a, const Tensor& b, BinaryOp op) {
  check_float_like(a, b, "add/mul", "second operand");
  KILN_CHECK(b.ndim() <= a.ndim(), "broadcast of ", b.shape().str(), " against ", a.shape().str());
  for (int i = 1; i <= b.ndim(); ++i)
    KILN_CHECK(b.dim(-i) == a.dim(-i) || b.dim(-i) == 1, "cannot broadcast ", b.shape().str(),
               " against ", a.shape().str());
  BinaryArgs args;
  args.a = a;
  args.b = b;
  args.op = op;
  args.out = like(a, a.shape());
  backend_for(a.device()).binary(args);
  return args.out;
}

Tensor add(const Tensor& a, const Tensor& b) {
  return binary(a, b, BinaryOp::Add);
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return binary(a, b, BinaryOp::Mul);
}

Tensor activate(const Tensor& x, Activation act) {
  UnaryArgs a;
  a.x = x;
  a.act = act;
  a.out = like(x, x.shape());
  backend_for(x.device()).unary(a);
  return a.out;
}

Tensor scale(const Tensor& x, float s) {
  UnaryArgs a;
  a.x = x;
  a.scale = s;
  a.out = like(x, x.shape());
  backend_for(x.device()).unary(a);
  return a.out;
}

Tensor clamp(const Tensor& x, float lo, float hi) {
  KILN_CHECK(lo <= hi, "clamp to [", lo, ", ", hi, "]");
  UnaryArgs a;
  a.x = x;
  a.lo = lo;
  a.hi = hi;
  a.out = like(x, x.shape());
  backend_for(x.device()).unary(a);
  return a.out;
}

Tensor linear_combination(const std::vector<std::pair<float, Tensor>>& terms) {
  KILN_CHECK(!terms.empty(), "linear_combination of nothing");
  LinearCombinationArgs a;
  const Tensor& first = terms[0].second;
  for (const auto& [c, t] : terms) {
    check_float_like(first, t, "linear_combination", "term");
    KILN_CHECK(t.shape() == first.shape(), "linear_combination: ", t.shape().str(), " vs ",
               first.shape().str());
    a.coeffs.push_back(c);
    a.terms.push_back(t);
  }
  a.out = like(first, first.shape());
  backend_for(first.device()).linear_combination(a);
  return a.out;
}

Tensor geglu(const Tensor& x, int64_t block) {
  const int64_t c = x.dim(-1);
  KILN_CHECK(c % 2 == 0, "geglu: odd feature count ", c);
  KILN_CHECK(block == 0 || (block > 0 && (block & (block - 1)) == 0 && (c / 2) % block == 0),
             "geglu: block ", block, " is not a power of two dividing ", c / 2);
  GegluArgs a;
  a.x = x.reshape({x.numel() / std::max<int64_t>(c, 1), c});
  a.block = block;
  Tensor out = like(x, x.shape().with_last(c / 2));
  a.out = out.reshape({a.x.dim(0), c / 2});
  backend_for(x.device()).geglu(a);
  return out;
}

Tensor linear_geglu(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  KILN_CHECK(x.ndim() >= 1 && weight.ndim() == 2, "linear_geglu: x ", x.describe(), ", weight ",
             weight.describe());
  check_float_like(x, weight, "linear_geglu", "weight");
  const int64_t k = x.dim(-1), n2 = weight.dim(0);
  KILN_CHECK(weight.dim(1) == k, "linear_geglu: x has ", k, " features, weight expects ",
             weight.dim(1));
  KILN_CHECK(n2 % (2 * kGegluBlock) == 0, "linear_geglu: ", n2,
             " weight rows are not whole blocks of ", kGegluBlock, " hidden and gate rows");
  check_optional_vector(x, bias, n2, "linear_geglu", "bias");
  const int64_t m = x.numel() / std::max<int64_t>(k, 1);
  LinearGegluArgs a;
  a.x = x.reshape({m, k});
  a.weight = weight;
  a.bias = bias;
  Tensor out = like(x, x.shape().with_last(n2 / 2));
  a.out = out.reshape({m, n2 / 2});
  if (backend_for(x.device()).linear_geglu(a)) return out;
  return geglu(linear(x, weight, bias), kGegluBlock);
}

Tensor interleave_geglu_rows(const Tensor& t) {
  KILN_CHECK(t.ndim() >= 1 && t.dim(0) % (2 * kGegluBlock) == 0,
             "interleave_geglu_rows: ", t.describe(),
             " does not split into hidden and gate blocks of ", kGegluBlock);
  const Tensor host = t.to(Device::CPU);
  Tensor out = Tensor::empty(t.shape(), t.dtype(), Device::CPU);
  const int64_t half = t.dim(0) / 2;
  const size_t row = dtype_size(t.dtype()) * size_t(t.numel() / t.dim(0));
  const char* src = static_cast<const char*>(host.raw());
  char* dst = static_cast<char*>(out.raw());
  // Output row r: block r / (2 * kGegluBlock); its first kGegluBlock rows are hidden
  // rows, the next kGegluBlock the gate rows of the same columns.
  for (int64_t r = 0; r < t.dim(0); ++r) {
    const int64_t block = r / (2 * kGegluBlock), within = r % (2 * kGegluBlock);
    const int64_t col = block * kGegluBlock + within % kGegluBlock;
    const int64_t from = within < kGegluBlock ? col : half + col;
    std::memcpy(dst + size_t(r) * row, src + size_t(from) * row, row);
  }
  return out.to(t.device());
}

Tensor concat_last(const std::vector<Tensor>& parts) {
  KILN_CHECK(!parts.empty(), "concat of nothing");
  const Tensor& first = parts[0];
  const int64_t outer = first.numel() / std::max<int64_t>(first.dim(-1), 1);
  ConcatArgs a;
  int64_t total = 0;
  for (const Tensor& p : parts) {
    check_float_like(first, p, "concat_last", "part");
    KILN_CHECK(p.ndim() == first.ndim(), "concat_last: ", p.shape().str(), " vs ",
               first.shape().str());
    for (int i = 0; i + 1 < p.ndim(); ++i)
      KILN_CHECK(p.dim(i) == first.dim(i), "concat_last: ", p.shape().str(), " vs ",
                 first.shape().str());
    total += p.dim(-1);
    a.parts.push_back(p.reshape({outer, p.dim(-1)}));
  }
  Tensor out = like(first, first.shape().with_last(total));
  a.out = out.reshape({outer, total});
  backend_for(first.device()).concat(a);
  return out;
}

Tensor concat_rows(const std::vector<Tensor>& parts) {
  KILN_CHECK(!parts.empty(), "concat of nothing");
  const Tensor& first = parts[0];
  int64_t rows = 0;
  for (const Tensor& p : parts) {
    KILN_CHECK(
        p.ndim() == first.ndim() && p.dtype() == first.dtype() && p.device() == first.device(),
        "concat_rows: ", p.describe(), " vs ", first.describe());
    for (int i = 1; i < p.ndim(); ++i)
      KILN_CHECK(p.dim(i) == first.dim(i), "concat_rows: ", p.shape().str(), " vs ",
                 first.shape().str());
    rows += p.dim(0);
  }
  Tensor out = like(first, first.shape().with(0, rows));
  int64_t at = 0;
  for (const Tensor& p : parts) {
    out.rows(at, at + p.dim(0)).copy_from(p);
    at += p.dim(0);
  }
  return out;
}

Tensor slice_last(const Tensor& x, int64_t begin, int64_t end) {
  const int64_t c = x.dim(-1);
  KILN_CHECK(0 <= begin && begin <= end && end <= c, "slice_last [", begin, ", ", end, ") of ",
             x.shape().str());
  SliceLastArgs a;
  a.x = x.reshape({x.numel() / std::max<int64_t>(c, 1), c});
  a.begin = begin;
  Tensor out = like(x, x.shape().with_last(end - begin));
  a.out = out.reshape({a.x.dim(0), end - begin});
  backend_for(x.device()).slice_last(a);
  return out;
}

Tensor upsample_nearest(const Tensor& x, int64_t out_h, int64_t out_w) {
  KILN_CHECK(x.ndim() == 4 && out_h > 0 && out_w > 0, "upsample_nearest: x ", x.describe());
  UpsampleArgs a;
  a.x = x;
  a.out = like(x, {x.dim(0), out_h, out_w, x.dim(3)});
  backend_for(x.device()).upsample_nearest(a);
  return a.out;
}

PhaseConv upsample_conv_phases(const Tensor& weight, const Tensor& bias) {
  KILN_CHECK(weight.ndim() == 4 && weight.dim(1) == 3 && weight.dim(2) == 3,
             "upsample_conv_phases: weight ", weight.describe(), " (expected [O, 3, 3, C])");
  const int64_t o = weight.dim(0), c = weight.dim(3);
  const Tensor w = to(weight, Device::CPU, DType::F32);
  Tensor out = Tensor::zeros({4 * o, 2, 2, c}, DType::F32, Device::CPU);
  const float* src = w.data<float>();
  float* dst = out.data<float>();
  // Tap t of parity p sums kernel rows first[p][t] .. last[p][t] (columns alike).
  constexpr int first[2][2] = {{0, 1}, {0, 2}}, last[2][2] = {{0, 2}, {1, 2}};
  for (int pr = 0; pr < 2; ++pr)
    for (int pc = 0; pc < 2; ++pc)
      for (int64_t oc = 0; oc < o; ++oc)
        for (int ty = 0; ty < 2; ++ty)
          for (int tx = 0; tx < 2; ++tx) {
            float* tap = dst + (((2 * pr + pc) * o + oc) * 4 + ty * 2 + tx) * c;
            for (int ky = first[pr][ty]; ky <= last[pr][ty]; ++ky)
              for (int kx = first[pc][tx]; kx <= last[pc][tx]; ++kx) {
                const float* k = src + ((oc * 3 + ky) * 3 + kx) * c;
                for (int64_t ch = 0; ch < c; ++ch) tap[ch] += k[ch];
              }
          }
  PhaseConv phases;
  phases.weight = to(out, weight.device(), weight.dtype());
  if (bias.defined()) {
    KILN_CHECK(bias.ndim() == 1 && bias.dim(0) == o, "upsample_conv_phases: bias ", bias.describe(),
               " for ", o, " outputs");
    phases.bias = concat_rows({bias, bias, bias, bias});
  }
  return phases;
}

namespace {

// The phases of upsample2x_conv: [B, H + 1, W + 1, 4·O].
Tensor upsample_phases(const Tensor& x, const PhaseConv& phases) {
  KILN_CHECK(x.ndim() == 4, "upsample2x_conv: x ", x.describe(), " (expected NHWC)");
  KILN_CHECK(phases.weight.ndim() == 4 && phases.weight.dim(0) % 4 == 0 &&
                 phases.weight.dim(1) == 2 && phases.weight.dim(2) == 2,
             "upsample2x_conv: phase weight ", phases.weight.describe(),
             " (expected [4·O, 2, 2, C])");
  const int64_t o = phases.weight.dim(0) / 4;
  // The direct form's FLOPs: 2 · B · 2H · 2W · O · 9 · C.
  const double model_flops =
      2.0 * double(x.dim(0) * 4 * x.dim(1) * x.dim(2)) * double(o) * 9.0 * double(x.dim(3));
  return conv2d_counted(x, phases.weight, phases.bias, Conv2dGeometry::same(3), Tensor(),
                        model_flops);
}

// The interleaved tensor's shape for phases z, checked: [B, 2H, 2W, C].
Shape interleaved_shape(const Tensor& z, const char* op) {
  KILN_CHECK(z.ndim() == 4 && z.dim(1) >= 2 && z.dim(2) >= 2 && z.dim(3) % 4 == 0, op, ": z ",
             z.describe(), " (expected [B, H + 1, W + 1, 4·C])");
  return {z.dim(0), 2 * (z.dim(1) - 1), 2 * (z.dim(2) - 1), z.dim(3) / 4};
}

// reuse_z: the normalised output is written over z's memory (z is no longer needed and
// is larger: [B, H + 1, W + 1, 4·C] against [B, 2H, 2W, C]), which keeps the peak where
// the two ops had it. Backends write it only once they have read z.
std::pair<Tensor, Tensor> interleave_norm(const Tensor& z, const Tensor& gamma, const Tensor& beta,
                                          int groups, float eps, Activation act, bool reuse_z) {
  InterleaveGroupNormArgs a;
  a.x = z;
  a.out = like(z, interleaved_shape(z, "interleave_phases_group_norm"));
  // The GroupNorm's own checks, on the interleaved tensor; its arguments serve the two
  // ops below where the backend has no fused form.
  GroupNormArgs norm = group_norm_args(a.out, gamma, beta, groups, eps, act, Tensor(), -1);
  a.gamma = gamma;
  a.beta = beta;
  a.groups = groups;
  a.eps = eps;
  a.act = act;
  a.normed = reuse_z ? z.reshape({z.numel()}).rows(0, a.out.numel()).reshape(a.out.shape())
                     : like(z, a.out.shape());
  Backend& backend = backend_for(z.device());
  if (backend.interleave_phases_group_norm(a)) return {a.out, a.normed};
  InterleavePhasesArgs copy;
  copy.x = z;
  copy.out = a.out;
  backend.interleave_phases(copy);
  norm.out = a.normed.reshape(norm.x.shape());
  backend.group_norm(norm);
  return {a.out, a.normed};
}

}  // namespace

Tensor upsample2x_conv(const Tensor& x, const PhaseConv& phases) {
  return interleave_phases(upsample_phases(x, phases));
}

std::pair<Tensor, Tensor> upsample2x_conv_group_norm(const Tensor& x, const PhaseConv& phases,
                                                     const Tensor& gamma, const Tensor& beta,
                                                     int groups, float eps, Activation act) {
  // The phases are this op's own: the normalised output goes into their memory.
  return interleave_norm(upsample_phases(x, phases), gamma, beta, groups, eps, act, true);
}

Tensor interleave_phases(const Tensor& z) {
  InterleavePhasesArgs a;
  a.x = z;
  a.out = like(z, interleaved_shape(z, "interleave_phases"));
  backend_for(z.device()).interleave_phases(a);
  return a.out;
}

std::pair<Tensor, Tensor> interleave_phases_group_norm(const Tensor& z, const Tensor& gamma,
                                                       const Tensor& beta, int groups, float eps,
                                                       Activation act) {
  return interleave_norm(z, gamma, beta, groups, eps, act, false);
}

Tensor timestep_embedding(const Tensor& timesteps, int dim, bool flip_sin_to_cos,
                          float downscale_freq_shift, float scale, float max_period) {
  KILN_CHECK(timesteps.ndim() == 1 && timesteps.dtype() == DType::F32,
             "timestep_embedding: timesteps ", timesteps.describe(), " (expected f32 [B])");
  KILN_CHECK(dim >= 2, "timestep_embedding: dim ", dim);
  TimestepEmbeddingArgs a;
  a.timesteps = timesteps;
  a.dim = dim;
  a.flip_sin_to_cos = flip_sin_to_cos;
  a.downscale_freq_shift = downscale_freq_shift;
  a.scale = scale;
  a.max_period = max_period;
  a.out = Tensor::empty({timesteps.dim(0), dim}, DType::F32, timesteps.device());
  backend_for(timesteps.device()).timestep_embedding(a);
  return a.out;
}

Tensor embedding(const Tensor& ids, const Tensor& table) {
  KILN_CHECK(ids.dtype() == DType::I32 && table.ndim() == 2, "embedding: ids ", ids.describe(),
             ", table ", table.describe());
  check_same_device(ids, table, "embedding");
  EmbeddingArgs a;
  a.ids = ids.reshape({ids.numel()});
  a.table = table;
  Shape out_shape = ids.shape();
  std::vector<int64_t> dims = out_shape.vec();
  dims.push_back(table.dim(1));
  Tensor out = like(table, Shape(dims));
  a.out = out.reshape({ids.numel(), table.dim(1)});
  backend_for(table.device()).embedding(a);
  return out;
}

Tensor cast(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  KILN_CHECK(is_floating(x.dtype()) && is_floating(dtype), "cast from ", dtype_name(x.dtype()),
             " to ", dtype_name(dtype));
  CastArgs a;
  a.x = x;
  a.out = Tensor::empty(x.shape(), dtype, x.device());
  backend_for(x.device()).cast(a);
  return a.out;
}

Tensor to(const Tensor& x, Device device, DType dtype) {
  if (x.device() == device) return cast(x, dtype);
  // Convert where the data is, so that only the final dtype crosses the bus.
  if (x.device() == Device::CPU) return cast(x, dtype).to(device);
  return cast(x.to(device), dtype);
}

}  // namespace kiln::ops
