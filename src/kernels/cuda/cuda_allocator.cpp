// The CUDA backend's caching allocator (cuda_allocator.h).
#include "kernels/cuda/cuda_allocator.h"

#include <cuda_runtime.h>

#include <algorithm>

namespace fh1::cuda {
namespace {

// Rounds an allocation up to a size class, so freed buffers are found again: 512 B steps up to
// 1 MiB, then steps of an eighth of the power of two below.
size_t size_class(size_t bytes) {
  if (bytes <= (1u << 20)) return std::max<size_t>(512, (bytes + 511) / 512 * 512);
  size_t p = 1;
  while (p * 2 <= bytes) p *= 2;
  const size_t step = p / 8;
  return (bytes + step - 1) / step * step;
}

}  // namespace

CachingAllocator::~CachingAllocator() {
  for (auto& [p, size] : live_) cudaFree(p);
  trim();
}

void* CachingAllocator::alloc(size_t bytes) {
  const size_t size = size_class(std::max<size_t>(bytes, 1));
  void* p = nullptr;
  auto it = cache_.find(size);
  if (it != cache_.end() && !it->second.empty()) {
    // The lowest address of the size, whatever the order buffers came back in: a decode step's
    // activations get the same addresses step after step, so its graph is replayed.
    auto& v = it->second;
    const auto low = std::min_element(v.begin(), v.end());
    p = *low;
    *low = v.back();
    v.pop_back();
    cached_bytes_ -= size;
  } else if (cudaMalloc(&p, size) != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    return nullptr;
  }
  live_[p] = size;
  live_bytes_ += size;
  peak_live_ = std::max(peak_live_, live_bytes_);
  return p;
}

void CachingAllocator::free(void* p) {
  if (p == nullptr) return;
  auto it = live_.find(p);
  if (it == live_.end()) return;
  cache_[it->second].push_back(p);
  live_bytes_ -= it->second;
  cached_bytes_ += it->second;
  live_.erase(it);
}

void CachingAllocator::trim() {
  for (auto& [size, v] : cache_)
    for (void* p : v) cudaFree(p);
  cache_.clear();
  cached_bytes_ = 0;
}

}  // namespace fh1::cuda
