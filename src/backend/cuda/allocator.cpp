// The caching allocator for Device::CUDA. After the first forward pass of a shape
// no op calls cudaMalloc: freed blocks wait in per-size free lists and are handed
// out again. All kernels run on one stream, so a block freed on the host can be
// reused at once: the next use is queued behind the last.
//
// Sizes round up to a class (512-byte steps below 1 MiB, then four classes per
// power of two, at most 25% slack); a request takes the smallest free block of its
// class or larger (up to twice its size), so that the same sequence of requests
// maps to the same blocks run after run. A pool (CapturedForward's arena) keeps its blocks apart
// from everyone else's, so the addresses a captured graph writes are never handed to anyone else.
//
// Long-lived allocations (a model's weights, made under LongLivedAllocations) are
// packed instead: 256-byte aligned ranges of 64 MiB slabs, best fit, neighbours
// merged when freed, a slab returned to the driver when it is empty. Rounded to the
// classes, SDXL's 4.9 GB of UNet weights would take 0.5 GB more.
#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "backend/cuda/context.h"

namespace kiln::cuda {
namespace {

size_t size_class(size_t bytes) {
  constexpr size_t kSmall = size_t(1) << 20;
  if (bytes <= kSmall) return std::max<size_t>(512, (bytes + 511) / 512 * 512);
  size_t power = kSmall;
  while (power * 2 < bytes) power *= 2;  // power < bytes <= 2 * power
  const size_t step = power / 4;
  return (bytes + step - 1) / step * step;
}

thread_local int t_pool = 0;  // 0: the shared pool

class CachingAllocator final : public Allocator {
 public:
  std::shared_ptr<Buffer> allocate(size_t bytes) override {
    if (bytes == 0) return std::make_shared<Buffer>(Device::CUDA, nullptr, 0, nullptr);
    context();  // the device is set up before the first cudaMalloc
    if (LongLivedAllocations::active() && t_pool == 0 && !context().capturing)
      return allocate_packed(bytes);
    size_t size = size_class(bytes);
    void* ptr = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const int pool = t_pool;
      auto& free_list = free_[pool];
      // The smallest free block that holds the request, if it is not more than twice
      // as big: a pass then reuses blocks across neighbouring size classes instead of
      // holding one set of blocks per class.
      auto it = free_list.lower_bound(size);
      if (it != free_list.end() && it->first > 2 * size) it = free_list.end();
      if (it != free_list.end()) {
        size = it->first;
        ptr = it->second;
        free_list.erase(it);
      } else {
        ptr = device_malloc(size);
        blocks_[ptr] = Block{size, pool};
      }
      in_use_ += size;
      peak_in_use_ = std::max(peak_in_use_, in_use_);
      if (poison_) CUDA_CHECK(cudaMemsetAsync(ptr, 0xFF, size, stream()));
    }
    return std::make_shared<Buffer>(Device::CUDA, ptr, bytes, [this](void* p) { release(p); });
  }

  void copy(void* dst, Device dst_device, const void* src, Device src_device,
            size_t bytes) override {
    if (bytes == 0) return;
    if (dst_device == Device::CPU && src_device == Device::CPU) {
      std::memcpy(dst, src, bytes);
      return;
    }
    const cudaStream_t s = stream();
    if (dst_device == Device::CUDA && src_device == Device::CUDA) {
      // Stream-ordered, like every kernel: readers and writers on the device see it in order.
      CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
    } else if (dst_device == Device::CUDA) {
      KILN_CHECK(!context().capturing,
                 "a host-to-device copy inside a captured forward pass (its inputs must already "
                 "be on the device)");
      // From pageable memory the call returns once the bytes are staged, so the
      // host buffer may be freed right after.
      CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
    } else {
      KILN_CHECK(!context().capturing, "a device-to-host copy inside a captured forward pass");
      CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
      CUDA_CHECK(cudaStreamSynchronize(s));
    }
  }

  int create_pool() {
    std::lock_guard<std::mutex> lock(mu_);
    return ++last_pool_;
  }

  // The pool's free blocks join the shared pool; its live ones do when freed.
  void release_pool(int pool) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(pool);
    if (it != free_.end()) {
      for (auto& [size, ptr] : it->second) {
        blocks_[ptr].pool = 0;
        free_[0].emplace(size, ptr);
      }
      free_.erase(pool);
    }
    for (auto& [ptr, block] : blocks_)
      if (block.pool == pool) block.pool = 0;
  }

  size_t pool_bytes(int pool) {
    std::lock_guard<std::mutex> lock(mu_);
    size_t total = 0;
    for (const auto& [ptr, block] : blocks_)
      if (block.pool == pool) total += block.size;
    return total;
  }

  MemoryStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {in_use_, peak_in_use_, reserved_, peak_reserved_, mallocs_};
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    peak_in_use_ = in_use_;
    peak_reserved_ = reserved_;
  }

  void release_cached() {
    std::lock_guard<std::mutex> lock(mu_);
    free_cached_locked();
  }

  void set_poison(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    poison_ = on;
  }

 private:
  struct Block {
    size_t size = 0;
    int pool = 0;
  };

  // --- the packed region -------------------------------------------------------
  static constexpr size_t kSlab = size_t(64) << 20;
  static constexpr size_t kPackAlign = 256;
  struct Range {
    size_t size = 0;
    char* slab = nullptr;  // the cudaMalloc'd base it lies in
  };

  std::shared_ptr<Buffer> allocate_packed(size_t bytes) {
    const size_t size = (bytes + kPackAlign - 1) / kPackAlign * kPackAlign;
    char* ptr = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto fit = packed_free_.lower_bound({size, nullptr});  // best fit: smallest that holds it
      if (fit == packed_free_.end()) {
        const size_t slab_size = std::max(kSlab, (size + (size_t(2) << 20) - 1) >> 21 << 21);
        char* slab = static_cast<char*>(device_malloc(slab_size));
        slabs_[slab] = slab_size;
        add_free_range(slab, Range{slab_size, slab});
        fit = packed_free_.lower_bound({size, nullptr});
      }
      ptr = fit->second;
      const Range range = packed_by_address_.at(ptr);
      remove_free_range(ptr);
      if (range.size > size) add_free_range(ptr + size, Range{range.size - size, range.slab});
      packed_[ptr] = Range{size, range.slab};
      in_use_ += size;
      peak_in_use_ = std::max(peak_in_use_, in_use_);
      if (poison_) CUDA_CHECK(cudaMemsetAsync(ptr, 0xFF, size, stream()));
    }
    return std::make_shared<Buffer>(Device::CUDA, ptr, bytes, [this](void* p) { release(p); });
  }

  void add_free_range(char* at, Range range) {
    packed_free_.emplace(std::make_pair(range.size, at), at);
    packed_by_address_[at] = range;
  }
  void remove_free_range(char* at) {
    const Range range = packed_by_address_.at(at);
    packed_free_.erase({range.size, at});
    packed_by_address_.erase(at);
  }

  // Under mu_: `at` (a packed block) becomes free, merged with free neighbours of
  // its slab; an empty slab goes back to the driver.
  void release_packed(char* at, Range range) {
    in_use_ -= range.size;
    auto next = packed_by_address_.find(at + range.size);
    if (next != packed_by_address_.end() && next->second.slab == range.slab) {
      range.size += next->second.size;
      remove_free_range(next->first);
    }
    auto after = packed_by_address_.lower_bound(at);
    if (after != packed_by_address_.begin()) {
      auto before = std::prev(after);
      if (before->second.slab == range.slab && before->first + before->second.size == at) {
        at = before->first;
        range.size += before->second.size;
        remove_free_range(at);
      }
    }
    if (at == range.slab && range.size == slabs_.at(range.slab) && !context().capturing) {
      // Queued kernels may still read the weights being dropped. Called from a
      // tensor's destructor: errors are not thrown from here (a failed free keeps
      // the slab, as a free range).
      if (cudaStreamSynchronize(stream()) == cudaSuccess && cudaFree(range.slab) == cudaSuccess) {
        reserved_ -= range.size;
        slabs_.erase(range.slab);
        return;
      }
      (void)cudaGetLastError();
    }
    add_free_range(at, range);
  }

  void* device_malloc(size_t size) {
    void* ptr = nullptr;
    cudaError_t e = cudaMalloc(&ptr, size);
    // Retry with the cache emptied, except while a graph is being captured: freeing
    // synchronises the device, which would break the capture; it fails instead, and
    // the caller runs eagerly.
    if (e == cudaErrorMemoryAllocation && !context().capturing) {
      (void)cudaGetLastError();
      free_cached_locked();
      e = cudaMalloc(&ptr, size);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_bytes = 0, total = 0;
      (void)cudaMemGetInfo(&free_bytes, &total);
      KILN_FAIL("out of GPU memory allocating ", size >> 20, " MiB (kiln holds ", reserved_ >> 20,
                " MiB, ", in_use_ >> 20, " MiB in use; the device has ", free_bytes >> 20,
                " MiB free of ", total >> 20, " MiB): ", cudaGetErrorString(e));
    }
    reserved_ += size;
    peak_reserved_ = std::max(peak_reserved_, reserved_);
    ++mallocs_;
    return ptr;
  }

  // Frees every cached block of every pool except those a live graph owns.
  void free_cached_locked() {
    bool any = false;
    for (auto& [pool, list] : free_) {
      if (pool != 0) continue;
      for (auto& [size, ptr] : list) {
        if (!any) CUDA_CHECK(cudaDeviceSynchronize());  // queued work may still read them
        any = true;
        CUDA_CHECK(cudaFree(ptr));
        reserved_ -= size;
        blocks_.erase(ptr);
      }
      list.clear();
    }
  }

  void release(void* ptr) {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto packed = packed_.find(static_cast<char*>(ptr)); packed != packed_.end()) {
      const Range range = packed->second;
      packed_.erase(packed);
      release_packed(static_cast<char*>(ptr), range);
      return;
    }
    auto it = blocks_.find(ptr);
    if (it == blocks_.end()) return;  // cannot happen; never throw from a destructor
    in_use_ -= it->second.size;
    free_[it->second.pool].emplace(it->second.size, ptr);
  }

  std::mutex mu_;
  std::unordered_map<void*, Block> blocks_;
  std::map<char*, size_t> slabs_;                                 // base -> bytes
  std::unordered_map<char*, Range> packed_;                       // live packed blocks
  std::map<char*, Range> packed_by_address_;                      // free ranges
  std::map<std::pair<size_t, char*>, char*> packed_free_;         // the same, by size
  std::map<int, std::multimap<size_t, void*>> free_;
  size_t in_use_ = 0, peak_in_use_ = 0, reserved_ = 0, peak_reserved_ = 0, mallocs_ = 0;
  int last_pool_ = 0;
  bool poison_ = false;
};

CachingAllocator& the_allocator() {
  // Never destroyed: tensors held in static objects may be freed after main returns.
  static CachingAllocator* instance = new CachingAllocator();
  return *instance;
}

}  // namespace

void register_cuda_allocator() {
  register_allocator(Device::CUDA, &the_allocator());
}

std::shared_ptr<Buffer> scratch(size_t bytes) {
  return the_allocator().allocate(bytes);
}

int create_pool() {
  return the_allocator().create_pool();
}
void release_pool(int pool) {
  the_allocator().release_pool(pool);
}
size_t pool_bytes(int pool) {
  return the_allocator().pool_bytes(pool);
}

PoolScope::PoolScope(int pool) : previous_(t_pool) {
  t_pool = pool;
}
PoolScope::~PoolScope() {
  t_pool = previous_;
}

MemoryStats memory_stats() {
  return the_allocator().stats();
}
void reset_peak_memory() {
  the_allocator().reset_peak();
}
void release_cached_memory() {
  the_allocator().release_cached();
}
void set_poison_allocations(bool on) {
  the_allocator().set_poison(on);
}

}  // namespace kiln::cuda
