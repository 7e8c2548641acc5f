// Tensor: a typed, shaped, contiguous view of a device buffer.
//
// Tensors are always contiguous (row-major over their shape). A view shares the
// buffer of its parent: reshape() reinterprets the extents, rows() selects a
// range of the outermost dimension. Image activations are NHWC: [B, H, W, C].
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "core/shape.h"

namespace kiln {

enum class Device : uint8_t { CPU, CUDA };
std::string_view device_name(Device d);

// A block of memory on one device. Owns it unless constructed over external
// memory (an mmap'd file region), in which case the release callback runs.
class Buffer {
 public:
  Buffer(Device device, void* data, size_t bytes, std::function<void(void*)> release)
      : device_(device), data_(data), bytes_(bytes), release_(std::move(release)) {}
  ~Buffer() {
    if (release_) release_(data_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  Device device() const { return device_; }
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  Device device_;
  void* data_;
  size_t bytes_;
  std::function<void(void*)> release_;
};

// Device memory comes from an allocator registered by that device's backend,
// so that core does not depend on any backend.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual std::shared_ptr<Buffer> allocate(size_t bytes) = 0;
  // Copies between host and this device (or within it). Synchronous.
  virtual void copy(void* dst, Device dst_device, const void* src, Device src_device,
                    size_t bytes) = 0;
};
// While one is alive, allocations made on this thread are meant to live as long as a
// model (its weights): a device allocator may pack them tightly instead of rounding
// them up to the size classes it reuses blocks by. A hint; nests.
class LongLivedAllocations {
 public:
  LongLivedAllocations();
  ~LongLivedAllocations();
  LongLivedAllocations(const LongLivedAllocations&) = delete;
  LongLivedAllocations& operator=(const LongLivedAllocations&) = delete;
  static bool active();
};

void register_allocator(Device device, Allocator* allocator);
Allocator& allocator_for(Device device);
bool device_available(Device device);

class Tensor {
 public:
  Tensor() = default;
  Tensor(Shape shape, DType dtype, std::shared_ptr<Buffer> buffer, size_t offset = 0);

  static Tensor empty(Shape shape, DType dtype, Device device = Device::CPU);
  static Tensor zeros(Shape shape, DType dtype, Device device = Device::CPU);
  // A CPU f32 tensor holding a copy of `values`.
  static Tensor from_floats(Shape shape, const float* values);

  bool defined() const { return buffer_ != nullptr; }
  const Shape& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  Device device() const { return buffer_ ? buffer_->device() : Device::CPU; }
  int ndim() const { return shape_.ndim(); }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool is_cpu() const { return device() == Device::CPU; }

  void* raw() const { return static_cast<char*>(buffer_->data()) + offset_; }
  template <class T>
  T* data() const {
    check_element<T>();
    return static_cast<T*>(raw());
  }

  // Views sharing this tensor's buffer.
  Tensor reshape(Shape shape) const;
  Tensor rows(int64_t begin, int64_t end) const;  // [begin, end) of dim 0

  // Copies.
  Tensor to(Device device) const;
  Tensor clone() const;
  void copy_from(const Tensor& src);  // same shape and dtype, any devices

  std::string describe() const;  // "f32[2, 64, 64, 4] on cpu"

 private:
  template <class T>
  void check_element() const;

  Shape shape_;
  DType dtype_ = DType::F32;
  std::shared_ptr<Buffer> buffer_;
  size_t offset_ = 0;  // bytes
};

template <class T>
void Tensor::check_element() const {
  constexpr DType want = std::is_same_v<T, float>     ? DType::F32
                         : std::is_same_v<T, f16>     ? DType::F16
                         : std::is_same_v<T, bf16>    ? DType::BF16
                         : std::is_same_v<T, int32_t> ? DType::I32
                                                      : DType::I64;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, f16> || std::is_same_v<T, bf16> ||
                    std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t>,
                "unsupported element type");
  KILN_CHECK(dtype_ == want, "tensor holds ", dtype_name(dtype_), ", accessed as ",
             dtype_name(want));
}

}  // namespace kiln
