// A tensor's extents: up to kMaxDims dimensions, stored inline.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "kiln/error.h"

namespace kiln {

class Shape {
 public:
  static constexpr int kMaxDims = 6;

  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) { assign(dims.begin(), dims.end()); }
  explicit Shape(const std::vector<int64_t>& dims) { assign(dims.begin(), dims.end()); }

  int ndim() const { return ndim_; }
  int64_t operator[](int i) const { return dims_[size_t(normalize(i))]; }
  int64_t& operator[](int i) { return dims_[size_t(normalize(i))]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim_; ++i) n *= dims_[size_t(i)];
    return n;
  }
  // Product of the dimensions in [begin, end).
  int64_t span(int begin, int end) const {
    int64_t n = 1;
    for (int i = begin; i < end; ++i) n *= dims_[size_t(i)];
    return n;
  }
  const int64_t* begin() const { return dims_.data(); }
  const int64_t* end() const { return dims_.data() + ndim_; }
  std::vector<int64_t> vec() const { return {begin(), end()}; }

  // Same dims with the last one replaced.
  Shape with_last(int64_t last) const {
    Shape s = *this;
    s[-1] = last;
    return s;
  }
  Shape with(int dim, int64_t value) const {
    Shape s = *this;
    s[dim] = value;
    return s;
  }

  bool operator==(const Shape& o) const {
    if (ndim_ != o.ndim_) return false;
    for (int i = 0; i < ndim_; ++i)
      if (dims_[size_t(i)] != o.dims_[size_t(i)]) return false;
    return true;
  }
  bool operator!=(const Shape& o) const { return !(*this == o); }

  std::string str() const {
    std::string s = "[";
    for (int i = 0; i < ndim_; ++i) s += (i ? ", " : "") + std::to_string(dims_[size_t(i)]);
    return s + "]";
  }

 private:
  template <class It>
  void assign(It first, It last) {
    ndim_ = 0;
    for (; first != last; ++first) {
      KILN_CHECK(ndim_ < kMaxDims, "a shape has at most ", kMaxDims, " dims");
      KILN_CHECK(*first >= 0, "negative dimension ", *first);
      dims_[size_t(ndim_++)] = *first;
    }
  }
  int normalize(int i) const {
    const int j = i < 0 ? i + ndim_ : i;
    KILN_CHECK(j >= 0 && j < ndim_, "dim ", i, " out of range for a ", ndim_, "-d shape");
    return j;
  }

  std::array<int64_t, kMaxDims> dims_{};
  int ndim_ = 0;
};

inline std::ostream& operator<<(std::ostream& os, const Shape& s) {
  return os << s.str();
}

}  // namespace kiln
