#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

namespace kiln {
namespace {

class HostAllocator final : public Allocator {
 public:
  std::shared_ptr<Buffer> allocate(size_t bytes) override {
    // 64-byte alignment for vector loads; aligned_alloc wants a multiple of it.
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = rounded ? std::aligned_alloc(64, rounded) : nullptr;
    if (rounded && !p) KILN_FAIL("out of host memory allocating ", bytes, " bytes");
    return std::make_shared<Buffer>(Device::CPU, p, bytes, [](void* q) { std::free(q); });
  }
  void copy(void* dst, Device, const void* src, Device, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
};

HostAllocator g_host;
Allocator* g_allocators[2] = {&g_host, nullptr};

thread_local int t_long_lived = 0;

}  // namespace

LongLivedAllocations::LongLivedAllocations() {
  ++t_long_lived;
}
LongLivedAllocations::~LongLivedAllocations() {
  --t_long_lived;
}
bool LongLivedAllocations::active() {
  return t_long_lived > 0;
}

std::string_view device_name(Device d) {
  return d == Device::CPU ? "cpu" : "cuda";
}

void register_allocator(Device device, Allocator* allocator) {
  g_allocators[int(device)] = allocator;
}

bool device_available(Device device) {
  return g_allocators[int(device)] != nullptr;
}

Allocator& allocator_for(Device device) {
  Allocator* a = g_allocators[int(device)];
  if (!a) KILN_FAIL("device ", device_name(device), " is not available in this build");
  return *a;
}

Tensor::Tensor(Shape shape, DType dtype, std::shared_ptr<Buffer> buffer, size_t offset)
    : shape_(shape), dtype_(dtype), buffer_(std::move(buffer)), offset_(offset) {
  KILN_CHECK(buffer_ && offset_ + nbytes() <= buffer_->bytes(), "tensor ", shape.str(),
             " does not fit its buffer");
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  const size_t bytes = size_t(shape.numel()) * dtype_size(dtype);
  return Tensor(shape, dtype, allocator_for(device).allocate(bytes));
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, Device::CPU);
  std::memset(t.raw(), 0, t.nbytes());
  return device == Device::CPU ? t : t.to(device);
}

Tensor Tensor::from_floats(Shape shape, const float* values) {
  Tensor t = empty(shape, DType::F32);
  std::memcpy(t.raw(), values, t.nbytes());
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  KILN_CHECK(shape.numel() == numel(), "cannot reshape ", shape_.str(), " to ", shape.str());
  return Tensor(shape, dtype_, buffer_, offset_);
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  KILN_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= dim(0), "rows [", begin, ", ", end,
             ") of ", shape_.str());
  const size_t row_bytes = size_t(shape_.span(1, ndim())) * dtype_size(dtype_);
  return Tensor(shape_.with(0, end - begin), dtype_, buffer_, offset_ + size_t(begin) * row_bytes);
}

Tensor Tensor::to(Device device) const {
  Tensor out = empty(shape_, dtype_, device);
  out.copy_from(*this);
  return out;
}

Tensor Tensor::clone() const {
  return to(device());
}

void Tensor::copy_from(const Tensor& src) {
  KILN_CHECK(src.shape() == shape_ && src.dtype() == dtype_, "copy of ", src.describe(), " into ",
             describe());
  // A device allocator knows how to reach the host; the host one only copies host memory.
  Allocator& a = allocator_for(device() != Device::CPU ? device() : src.device());
  a.copy(raw(), device(), src.raw(), src.device(), nbytes());
}

std::string Tensor::describe() const {
  return str(dtype_name(dtype_), shape_.str(), " on ", device_name(device()));
}

}  // namespace kiln
