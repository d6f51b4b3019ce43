// The CUDA backend's caching allocator (internal to src/kernels/cuda): device memory for
// activations, KV caches and states, kept by size class once freed, for the next allocation of
// that class. All work runs on the backend's one stream, so a buffer freed after the work that
// used it was queued can be handed out again at once.
#pragma once

#include <cstddef>
#include <map>
#include <unordered_map>
#include <vector>

namespace fh1::cuda {

class CachingAllocator {
 public:
  CachingAllocator() = default;
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;
  ~CachingAllocator();  // frees everything, live or cached

  // At least `bytes` (rounded up to a size class): a cached buffer of that class, the lowest
  // address first, else cudaMalloc; null when the device has no room (the caller makes room and
  // asks again).
  void* alloc(size_t bytes);
  // Back to the cache; pointers it did not hand out are ignored.
  void free(void* p);
  // Returns every cached buffer to the driver (the caller has synchronized the stream).
  void trim();

  size_t live_bytes() const { return live_bytes_; }
  size_t peak_live_bytes() const { return peak_live_; }
  size_t cached_bytes() const { return cached_bytes_; }
  void reset_peak() { peak_live_ = live_bytes_; }

 private:
  std::unordered_map<void*, size_t> live_;       // handed out: its size class
  std::map<size_t, std::vector<void*>> cache_;  // freed, by size class
  size_t live_bytes_ = 0, peak_live_ = 0, cached_bytes_ = 0;
};

}  // namespace fh1::cuda
