// FH1_CUDA_PROFILE=1 (cuda_kernels.cpp): the time of every op outside a recorded decode step,
// totals per op printed when the backend is destroyed. Only for finding where time goes.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <cuda_runtime.h>

namespace fh1::cuda {

// Each op is bracketed by two events on its stream. The events are read in batches, not after
// every op: the host keeps running ahead as it does without the profile, so an op's time is its
// share of the stream's time (gaps where the GPU waits for the host included).
class OpProfile {
 public:
  OpProfile() = default;
  OpProfile(const OpProfile&) = delete;
  OpProfile& operator=(const OpProfile&) = delete;
  ~OpProfile();

  template <class F>
  void time(const char* name, cudaStream_t s, F& f) {
    record(s);
    f();
    record(s);
    pending_.push_back(name);
    if (pending_.size() >= 4096) flush();
  }
  // Reads the events recorded so far (waits for them).
  void flush();
  // The totals per op, largest first.
  void print(std::FILE* out) const;

 private:
  void record(cudaStream_t s);
  std::vector<cudaEvent_t> events_;  // two per pending op
  size_t used_ = 0;                  // events recorded since the last flush
  std::vector<const char*> pending_;  // the ops whose events are not read yet
  std::map<std::string, std::pair<double, int64_t>> totals_;  // ms, calls
};

}  // namespace fh1::cuda
