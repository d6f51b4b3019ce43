// Helpers shared by the per-op kernel tests (CPU, quantized, CUDA): random inputs and the error
// measure they are compared with.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace fh1::test {

// n values drawn from N(0, scale^2).
inline std::vector<float> randn(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// max |got - ref| / rms(ref), in double; a non-finite value in got gives infinity (always fails).
template <class Ref>
double rel_diff(const std::vector<float>& got, const std::vector<Ref>& ref) {
  double mx = 0, ss = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    mx = std::max(mx, std::abs(static_cast<double>(got[i]) - static_cast<double>(ref[i])));
    ss += static_cast<double>(ref[i]) * static_cast<double>(ref[i]);
  }
  return mx / std::max(1e-30, std::sqrt(ss / static_cast<double>(std::max<size_t>(1, ref.size()))));
}

}  // namespace fh1::test
