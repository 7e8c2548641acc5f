// Elementwise and data-movement ops: binary with broadcast, unary, linear
// combinations (the samplers' updates), casts, GEGLU, nearest upsampling,
// timestep embeddings, embedding lookups, concatenation and slicing, and the
// bias/activation/residual epilogue. Memory-bound: 16-byte accesses where the
// sizes and addresses allow, f32 arithmetic throughout.
#include <algorithm>
#include <cmath>

#include "backend/cuda/device.cuh"
#include "backend/cuda/fast_div.h"
#include "backend/cuda/ops.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------
// out = a (+|*) b, b broadcast against a. a is seen as rows × inner; b's offset
// for a row comes from its strides over a's outer dims, and along the inner dim
// b either runs with a (stride 1) or repeats one value (stride 0).
struct BinaryParams {
  const void* a;
  const void* b;
  void* out;
  uint32_t packs;  // of a
  FastDiv inner;   // packs per row of a
  int outer_dims;  // dims of a before the last (0: one row)
  FastDiv dims[Shape::kMaxDims];
  int64_t bstride[Shape::kMaxDims];
  int64_t b_inner_stride;  // 0 or 1
  bool add;
};

template <class T, int N>
__global__ void binary_kernel(BinaryParams p) {
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  T* out = static_cast<T*>(p.out);
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < p.packs;
       i += gridDim.x * blockDim.x) {
    const int64_t e = int64_t(i) * N;
    int64_t boff = 0, col = e;  // one row: b's offset is the column's
    if (p.outer_dims > 0) {
      uint32_t row, cp;
      p.inner.divmod(i, row, cp);
      col = int64_t(cp) * N;
      for (int d = p.outer_dims - 1; d >= 0; --d) {
        uint32_t rest, coord;
        p.dims[d].divmod(row, rest, coord);
        boff += int64_t(coord) * p.bstride[d];
        row = rest;
      }
    }
    const Pack<T, N> x = *reinterpret_cast<const Pack<T, N>*>(a + e);
    Pack<T, N> y, r;
    if (p.b_inner_stride == 1) {
      y = *reinterpret_cast<const Pack<T, N>*>(b + boff + col);
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) y.v[j] = b[boff];
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float u = to_float(x.v[j]), w = to_float(y.v[j]);
      r.v[j] = from_float<T>(p.add ? u + w : u * w);
    }
    *reinterpret_cast<Pack<T, N>*>(out + e) = r;
  }
}

// ---------------------------------------------------------------------------
struct UnaryParams {
  const void* x;
  void* out;
  int64_t n;
  Activation act;
  float scale, lo, hi;
};

template <class T, int N>
__global__ void unary_kernel(UnaryParams p) {
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n / N;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Pack<T, N> v = *reinterpret_cast<const Pack<T, N>*>(x + i * N);
    Pack<T, N> r;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float y = activate(p.act, to_float(v.v[j])) * p.scale;
      // std::clamp's comparisons, so that a NaN stays a NaN.
      r.v[j] = from_float<T>(y < p.lo ? p.lo : (p.hi < y ? p.hi : y));
    }
    *reinterpret_cast<Pack<T, N>*>(out + i * N) = r;
  }
}

// ---------------------------------------------------------------------------
constexpr int kMaxTerms = 8;
struct CombinationParams {
  const void* terms[kMaxTerms];
  float coeffs[kMaxTerms];
  int count;
  void* out;
  int64_t n;
};

template <class T, int N>
__global__ void combination_kernel(CombinationParams p) {
  T* out = static_cast<T*>(p.out);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n / N;
       i += int64_t(gridDim.x) * blockDim.x) {
    float acc[N] = {};
    for (int t = 0; t < p.count; ++t) {
      const Pack<T, N> v =
          *reinterpret_cast<const Pack<T, N>*>(static_cast<const T*>(p.terms[t]) + i * N);
#pragma unroll
      for (int j = 0; j < N; ++j) acc[j] += p.coeffs[t] * to_float(v.v[j]);
    }
    Pack<T, N> r;
#pragma unroll
    for (int j = 0; j < N; ++j) r.v[j] = from_float<T>(acc[j]);
    *reinterpret_cast<Pack<T, N>*>(out + i * N) = r;
  }
}

// ---------------------------------------------------------------------------
template <class TI, class TO>
__global__ void cast_kernel(const TI* x, TO* out, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_float<TO>(to_float(x[i]));
}

// ---------------------------------------------------------------------------
// out[m, j] = x[m, j] * gelu(x[m, n + j]); with block_shift >= 0, x's columns alternate
// blocks of 2^block_shift hidden and gate columns (a pack never straddles a block).
template <class T, int N>
__global__ void geglu_kernel(const T* x, T* out, uint32_t packs, FastDiv row_packs,
                             int block_shift) {
  const int64_t n = int64_t(row_packs.divisor()) * N;
  const int64_t block = block_shift >= 0 ? int64_t(1) << block_shift : 0;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < packs; i += gridDim.x * blockDim.x) {
    uint32_t row, cp;
    row_packs.divmod(i, row, cp);
    const int64_t col = int64_t(cp) * N;
    const int64_t at =
        block ? ((col >> block_shift) << (block_shift + 1)) + (col & (block - 1)) : col;
    const T* hidden = x + int64_t(row) * 2 * n + at;
    const Pack<T, N> h = *reinterpret_cast<const Pack<T, N>*>(hidden);
    const Pack<T, N> g = *reinterpret_cast<const Pack<T, N>*>(hidden + (block ? block : n));
    Pack<T, N> r;
#pragma unroll
    for (int j = 0; j < N; ++j)
      r.v[j] = from_float<T>(to_float(h.v[j]) * activate(Activation::GELU, to_float(g.v[j])));
    *reinterpret_cast<Pack<T, N>*>(out + int64_t(i) * N) = r;
  }
}

// ---------------------------------------------------------------------------
// out[r, :] = [parts[0][r, :], parts[1][r, :], ...] in one pass (up to kMaxParts at a time).
constexpr int kMaxParts = 8;
struct ConcatParams {
  const void* parts[kMaxParts];
  int64_t width[kMaxParts];
  int64_t offset[kMaxParts + 1];  // first output column of each part
  int count;
  void* out;
  int64_t outer, total;
};

template <class T, int N>
__global__ void concat_kernel(ConcatParams p) {
  const int64_t first = p.offset[0], span = p.offset[p.count] - first;
  const int64_t packs = span / N, work = p.outer * packs;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < work;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / packs, col = first + (i - row * packs) * N;
    int k = 0;
    while (col >= p.offset[k + 1]) ++k;
    const T* src = static_cast<const T*>(p.parts[k]) + row * p.width[k] + (col - p.offset[k]);
    *reinterpret_cast<Pack<T, N>*>(static_cast<T*>(p.out) + row * p.total + col) =
        *reinterpret_cast<const Pack<T, N>*>(src);
  }
}

// ---------------------------------------------------------------------------
struct UpsampleParams {
  const void* x;
  void* out;
  int64_t batch, h, w, c, ho, wo;
  float sy, sx;
  uint32_t packs;        // of out
  FastDiv cp, fwo, fho;  // packs per pixel, output width, output height
};

template <class T, int N>
__global__ void upsample_kernel(UpsampleParams p) {
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const int64_t cp = p.cp.divisor();
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < p.packs;
       i += gridDim.x * blockDim.x) {
    uint32_t pixel, ch, rest, xo, b, y;
    p.cp.divmod(i, pixel, ch);
    p.fwo.divmod(pixel, rest, xo);
    p.fho.divmod(rest, b, y);
    // torch's 'nearest': floor(dst * (in / out)) with the ratio in float.
    const int64_t iy = min(int64_t(float(y) * p.sy), p.h - 1);
    const int64_t ix = min(int64_t(float(xo) * p.sx), p.w - 1);
    reinterpret_cast<Pack<T, N>*>(out)[i] =
        reinterpret_cast<const Pack<T, N>*>(x)[((int64_t(b) * p.h + iy) * p.w + ix) * cp + ch];
  }
}

// ---------------------------------------------------------------------------
struct InterleaveParams {
  const void* x;  // [B, H + 1, W + 1, 4·C]
  void* out;      // [B, 2H, 2W, C]
  int64_t hz, wz;
  uint32_t packs;        // of out
  FastDiv cp, fwo, fho;  // packs per output pixel, output width, output height
};

template <class T, int N>
__global__ void interleave_phases_kernel(InterleaveParams p) {
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const int64_t cp = p.cp.divisor();
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < p.packs;
       i += gridDim.x * blockDim.x) {
    uint32_t pixel, ch, rest, xo, b, y;
    p.cp.divmod(i, pixel, ch);
    p.fwo.divmod(pixel, rest, xo);
    p.fho.divmod(rest, b, y);
    const uint32_t r = y & 1, c = xo & 1;
    const int64_t zy = (y >> 1) + r, zx = (xo >> 1) + c;
    reinterpret_cast<Pack<T, N>*>(out)[i] = reinterpret_cast<const Pack<T, N>*>(
        x)[((int64_t(b) * p.hz + zy) * p.wz + zx) * 4 * cp + (2 * r + c) * cp + ch];
  }
}

// ---------------------------------------------------------------------------
struct TimestepParams {
  const float* t;
  float* out;
  int64_t batch, half_dim;
  int dim;
  bool flip;
  float log_period, denom, scale;
};

__global__ void timestep_kernel(TimestepParams p) {
  const int64_t total = p.batch * p.half_dim;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / p.half_dim, k = i - b * p.half_dim;
    const float freq = expf(p.log_period * float(k) / p.denom);
    const float arg = p.scale * (p.t[b] * freq);
    float* row = p.out + b * p.dim;
    row[p.flip ? p.half_dim + k : k] = sinf(arg);
    row[p.flip ? k : p.half_dim + k] = cosf(arg);
    if (k == 0 && (p.dim & 1)) row[p.dim - 1] = 0.0f;
  }
}

// ---------------------------------------------------------------------------
// An id outside the table gives a row of NaNs: the model checks ids on the host
// before they reach the device, and a kernel cannot throw.
template <class T, int N>
__global__ void embedding_kernel(const int32_t* ids, const T* table, T* out, uint32_t packs,
                                 int64_t vocab, FastDiv row_packs) {
  const int64_t cp = row_packs.divisor();
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < packs; i += gridDim.x * blockDim.x) {
    uint32_t r, ch;
    row_packs.divmod(i, r, ch);
    const int32_t id = ids[r];
    Pack<T, N> v;
    if (id >= 0 && id < vocab) {
      v = reinterpret_cast<const Pack<T, N>*>(table)[int64_t(id) * cp + ch];
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) v.v[j] = from_float<T>(__int_as_float(0x7fc00000));
    }
    reinterpret_cast<Pack<T, N>*>(out)[i] = v;
  }
}

// ---------------------------------------------------------------------------
template <class T, int N>
__global__ void bias_act_residual_kernel(T* out, const T* bias, const T* residual, uint32_t packs,
                                         FastDiv row_packs, Activation act) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < packs; i += gridDim.x * blockDim.x) {
    uint32_t row, cp;
    row_packs.divmod(i, row, cp);
    const int64_t e = int64_t(i) * N, col = int64_t(cp) * N;
    Pack<T, N> v = *reinterpret_cast<const Pack<T, N>*>(out + e);
    Pack<T, N> bv, rv;
    if (bias) bv = *reinterpret_cast<const Pack<T, N>*>(bias + col);
    if (residual) rv = *reinterpret_cast<const Pack<T, N>*>(residual + e);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      float y = to_float(v.v[j]);
      if (bias) y += to_float(bv.v[j]);
      y = activate(act, y);
      if (residual) y += to_float(rv.v[j]);
      v.v[j] = from_float<T>(y);
    }
    *reinterpret_cast<Pack<T, N>*>(out + e) = v;
  }
}

// Accesses of `width` elements in `elements`, as the 32-bit count the kernels index
// with (their grid-stride loops add a stride, so at most 2^31).
uint32_t pack_count(int64_t elements, int width, const char* op) {
  const int64_t packs = elements / width;
  KILN_CHECK(packs <= INT32_MAX, op, ": ", elements,
             " elements are more than one launch indexes on CUDA (2^31 accesses)");
  return uint32_t(packs);
}

// Launches kernel<T, kVec<T>> or kernel<T, 1> over `work` elements.
#define KILN_LAUNCH_PACKED(kernel, T, width, work, ...)                                   \
  do {                                                                                    \
    if ((width) == 1) {                                                                   \
      kernel<T, 1><<<grid_for((work), kThreads), kThreads, 0, stream()>>>(__VA_ARGS__);   \
    } else {                                                                              \
      kernel<T, kVec<T>>                                                                  \
          <<<grid_for((work) / kVec<T>, kThreads), kThreads, 0, stream()>>>(__VA_ARGS__); \
    }                                                                                     \
    CUDA_CHECK_LAUNCH();                                                                  \
  } while (0)

}  // namespace

void binary(const BinaryArgs& a) {
  const int64_t n = a.a.numel();
  if (n == 0) return;
  BinaryParams p{};
  p.a = a.a.raw();
  p.b = a.b.raw();
  p.out = a.out.raw();
  p.add = a.op == BinaryOp::Add;
  int64_t inner = n;
  int64_t dims[Shape::kMaxDims] = {};
  if (a.b.numel() == n) {
    p.outer_dims = 0;
    p.b_inner_stride = 1;
  } else {
    // b's dims right-aligned against a's; stride 0 where b has extent 1.
    const int nd = a.a.ndim(), off = nd - a.b.ndim();
    int64_t s = 1;
    int64_t bstride[Shape::kMaxDims] = {};
    for (int i = nd - 1; i >= off; --i) {
      const int64_t extent = a.b.dim(i - off);
      bstride[i] = extent == 1 ? 0 : s;
      s *= extent;
    }
    inner = a.a.dim(-1);
    p.outer_dims = nd - 1;
    for (int i = 0; i < nd - 1; ++i) {
      KILN_CHECK(a.a.dim(i) <= INT32_MAX, "binary: ", a.a.describe(), " too large on CUDA");
      dims[i] = a.a.dim(i);
      p.bstride[i] = bstride[i];
    }
    p.b_inner_stride = bstride[nd - 1];
  }
  dispatch_float(a.a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    // A broadcast inner value needs no alignment of b.
    const int width = pack_width<T>(inner, {p.a, p.out, p.b_inner_stride ? p.b : nullptr});
    p.packs = pack_count(n, width, "binary");
    if (p.outer_dims > 0) {
      p.inner = FastDiv(uint32_t(inner / width));
      for (int i = 0; i < p.outer_dims; ++i) p.dims[i] = FastDiv(uint32_t(dims[i]));
    }
    KILN_LAUNCH_PACKED(binary_kernel, T, width, n, p);
  });
}

void unary(const UnaryArgs& a) {
  const int64_t n = a.x.numel();
  if (n == 0) return;
  const UnaryParams p{a.x.raw(), a.out.raw(), n, a.act, a.scale, a.lo, a.hi};
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    KILN_LAUNCH_PACKED(unary_kernel, T, pack_width<T>(n, {p.x, p.out}), n, p);
  });
}

void linear_combination(const LinearCombinationArgs& a) {
  const int64_t n = a.out.numel();
  if (n == 0) return;
  // Up to kMaxTerms per pass; later passes carry the sum so far as a term.
  size_t next = 0;
  bool first = true;
  while (next < a.terms.size() || first) {
    CombinationParams p{};
    p.out = a.out.raw();
    p.n = n;
    if (!first) {
      p.terms[0] = a.out.raw();
      p.coeffs[0] = 1.0f;
      p.count = 1;
    }
    while (next < a.terms.size() && p.count < kMaxTerms) {
      p.terms[p.count] = a.terms[next].raw();
      p.coeffs[p.count] = a.coeffs[next];
      ++p.count;
      ++next;
    }
    first = false;
    dispatch_float(a.out.dtype(), [&](auto tag) {
      using T = decltype(tag);
      int width = pack_width<T>(n, {p.out});
      for (int t = 0; t < p.count; ++t)
        if (!aligned16(p.terms[t])) width = 1;
      KILN_LAUNCH_PACKED(combination_kernel, T, width, n, p);
    });
  }
}

void cast(const CastArgs& a) {
  const int64_t n = a.x.numel();
  if (n == 0) return;
  dispatch_float(a.x.dtype(), [&](auto in_tag) {
    using TI = decltype(in_tag);
    dispatch_float(a.out.dtype(), [&](auto out_tag) {
      using TO = decltype(out_tag);
      cast_kernel<TI, TO><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
          static_cast<const TI*>(a.x.raw()), static_cast<TO*>(a.out.raw()), n);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void geglu(const GegluArgs& a) {
  const int64_t m = a.out.dim(0), n = a.out.dim(1);
  if (m * n == 0) return;
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a.x.raw());
    T* out = static_cast<T*>(a.out.raw());
    // A pack of `width` columns must stay inside one block of hidden or gate columns.
    const int width = a.block && a.block < kVec<T> ? 1 : pack_width<T>(n, {x, out});
    int block_shift = -1;
    while (a.block && (int64_t(1) << (block_shift + 1)) <= a.block) ++block_shift;
    KILN_LAUNCH_PACKED(geglu_kernel, T, width, m * n, x, out, pack_count(m * n, width, "geglu"),
                       FastDiv(uint32_t(n / width)), block_shift);
  });
}

void concat(const ConcatArgs& a) {
  const int64_t outer = a.out.dim(0), total = a.out.dim(1);
  if (outer == 0 || total == 0) return;
  if (!is_floating(a.out.dtype())) {  // integers: strided copies, one per part
    const size_t elem = dtype_size(a.out.dtype());
    int64_t at = 0;
    for (const Tensor& part : a.parts) {
      const int64_t w = part.dim(1);
      if (w > 0)
        CUDA_CHECK(cudaMemcpy2DAsync(
            static_cast<char*>(a.out.raw()) + size_t(at) * elem, size_t(total) * elem, part.raw(),
            size_t(w) * elem, size_t(w) * elem, size_t(outer), cudaMemcpyDeviceToDevice, stream()));
      at += w;
    }
    return;
  }
  int64_t at = 0;
  for (size_t first = 0; first < a.parts.size(); first += kMaxParts) {
    ConcatParams p{};
    p.out = a.out.raw();
    p.outer = outer;
    p.total = total;
    p.offset[0] = at;
    for (size_t i = first; i < a.parts.size() && p.count < kMaxParts; ++i, ++p.count) {
      p.parts[p.count] = a.parts[i].raw();
      p.width[p.count] = a.parts[i].dim(1);
      at += p.width[p.count];
      p.offset[p.count + 1] = at;
    }
    const int64_t span = at - p.offset[0];
    if (span == 0) continue;
    dispatch_float(a.out.dtype(), [&](auto tag) {
      using T = decltype(tag);
      int width = pack_width<T>(total, {p.out}) == 1 || p.offset[0] % kVec<T> ? 1 : kVec<T>;
      for (int i = 0; i < p.count; ++i)
        if (p.width[i] % kVec<T> || !aligned16(p.parts[i])) width = 1;
      KILN_LAUNCH_PACKED(concat_kernel, T, width, outer * span, p);
    });
  }
}

void slice_last(const SliceLastArgs& a) {
  const int64_t m = a.x.dim(0), c = a.x.dim(1), w = a.out.dim(1);
  const size_t elem = dtype_size(a.x.dtype());
  if (m == 0 || w == 0) return;
  CUDA_CHECK(cudaMemcpy2DAsync(
      a.out.raw(), size_t(w) * elem, static_cast<const char*>(a.x.raw()) + size_t(a.begin) * elem,
      size_t(c) * elem, size_t(w) * elem, size_t(m), cudaMemcpyDeviceToDevice, stream()));
}

void upsample_nearest(const UpsampleArgs& a) {
  UpsampleParams p{};
  p.x = a.x.raw();
  p.out = a.out.raw();
  p.batch = a.x.dim(0);
  p.h = a.x.dim(1);
  p.w = a.x.dim(2);
  p.c = a.x.dim(3);
  p.ho = a.out.dim(1);
  p.wo = a.out.dim(2);
  p.sy = float(p.h) / float(p.ho);
  p.sx = float(p.w) / float(p.wo);
  const int64_t total = p.batch * p.ho * p.wo * p.c;
  if (total == 0) return;
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int width = pack_width<T>(p.c, {p.x, p.out});
    p.packs = pack_count(total, width, "upsample_nearest");
    p.cp = FastDiv(uint32_t(p.c / width));
    p.fwo = FastDiv(uint32_t(p.wo));
    p.fho = FastDiv(uint32_t(p.ho));
    KILN_LAUNCH_PACKED(upsample_kernel, T, width, total, p);
  });
}

void interleave_phases(const InterleavePhasesArgs& a) {
  InterleaveParams p{};
  p.x = a.x.raw();
  p.out = a.out.raw();
  p.hz = a.x.dim(1);
  p.wz = a.x.dim(2);
  const int64_t c = a.out.dim(3), ho = a.out.dim(1), wo = a.out.dim(2);
  const int64_t total = a.out.numel();
  if (total == 0) return;
  dispatch_float(a.x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int width = pack_width<T>(c, {p.x, p.out});
    p.packs = pack_count(total, width, "interleave_phases");
    p.cp = FastDiv(uint32_t(c / width));
    p.fwo = FastDiv(uint32_t(wo));
    p.fho = FastDiv(uint32_t(ho));
    KILN_LAUNCH_PACKED(interleave_phases_kernel, T, width, total, p);
  });
}

void timestep_embedding(const TimestepEmbeddingArgs& a) {
  TimestepParams p{};
  p.t = a.timesteps.data<float>();
  p.out = a.out.data<float>();
  p.batch = a.timesteps.dim(0);
  p.half_dim = a.dim / 2;
  p.dim = a.dim;
  p.flip = a.flip_sin_to_cos;
  // Rounded to f32 where diffusers' get_timestep_embedding rounds (as the CPU twin).
  p.log_period = float(-std::log(double(a.max_period)));
  p.denom = float(double(p.half_dim) - double(a.downscale_freq_shift));
  p.scale = a.scale;
  const int64_t total = p.batch * p.half_dim;
  if (total == 0) return;
  timestep_kernel<<<grid_for(total, kThreads), kThreads, 0, stream()>>>(p);
  CUDA_CHECK_LAUNCH();
}

void embedding(const EmbeddingArgs& a) {
  const int64_t rows = a.ids.numel(), vocab = a.table.dim(0), c = a.table.dim(1);
  if (rows * c == 0) return;
  dispatch_float(a.table.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* table = static_cast<const T*>(a.table.raw());
    T* out = static_cast<T*>(a.out.raw());
    const int width = pack_width<T>(c, {table, out});
    KILN_LAUNCH_PACKED(embedding_kernel, T, width, rows * c, a.ids.data<int32_t>(), table, out,
                       pack_count(rows * c, width, "embedding"), vocab,
                       FastDiv(uint32_t(c / width)));
  });
}

void bias_act_residual(void* out, const void* bias, const void* residual, int64_t rows,
                       int64_t cols, Activation act, DType dtype) {
  if (rows * cols == 0 || (!bias && !residual && act == Activation::None)) return;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    const T* b = static_cast<const T*>(bias);
    const T* r = static_cast<const T*>(residual);
    const int width = pack_width<T>(cols, {o, b, r});
    KILN_LAUNCH_PACKED(bias_act_residual_kernel, T, width, rows * cols, o, b, r,
                       pack_count(rows * cols, width, "bias_act_residual"),
                       FastDiv(uint32_t(cols / width)), act);
  });
}

}  // namespace kiln::cuda
