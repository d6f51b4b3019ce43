#include "kernels/cuda/cuda_profile.h"

#include <algorithm>

#include "kernels/cuda/cuda_ops.h"

namespace fh1::cuda {

OpProfile::~OpProfile() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

void OpProfile::record(cudaStream_t s) {
  if (used_ == events_.size()) {
    cudaEvent_t e = nullptr;
    check(cudaEventCreate(&e), "event");
    events_.push_back(e);
  }
  check(cudaEventRecord(events_[used_++], s), "event");
}

void OpProfile::flush() {
  if (pending_.empty()) return;
  check(cudaEventSynchronize(events_[2 * pending_.size() - 1]), "event");
  for (size_t i = 0; i < pending_.size(); ++i) {
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, events_[2 * i], events_[2 * i + 1]);
    auto& t = totals_[pending_[i]];
    t.first += ms;
    t.second += 1;
  }
  pending_.clear();
  used_ = 0;
}

void OpProfile::print(std::FILE* out) const {
  if (totals_.empty()) return;
  std::vector<std::pair<double, std::string>> v;
  double total = 0;
  for (const auto& [name, t] : totals_) {
    v.emplace_back(t.first, name);
    total += t.first;
  }
  std::sort(v.rbegin(), v.rend());
  std::fprintf(out, "FH1_CUDA_PROFILE: %.1f ms in ops outside graphs\n", total);
  for (const auto& [ms, name] : v)
    std::fprintf(out, "  %-22s %10.2f ms %5.1f%%  (%lld calls)\n", name.c_str(), ms, 100.0 * ms / std::max(total, 1e-9),
                 static_cast<long long>(totals_.at(name).second));
}

}  // namespace fh1::cuda
