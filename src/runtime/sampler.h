// Turning logits into the next token: greedy at temperature 0, otherwise temperature, then
// top-k, top-p and min-p filters (the order of transformers' generate), then a draw.
#pragma once

#include <cstdint>
#include <random>
#include <span>

namespace fh1 {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);  // throws fh1::Error for out-of-range values
  int32_t sample(std::span<const float> logits);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

// Index of the largest logit (the first one on ties, as torch.argmax).
int32_t argmax(std::span<const float> logits);

}  // namespace fh1
