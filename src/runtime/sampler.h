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

  // How many of the best logits a draw depends on: 1 when greedy, top_k when set, else 0 (all of
  // them: top-p and min-p alone may keep any number).
  int candidates_needed() const;
  // The same draw as sample() from the candidates_needed() best logits or more (ids and values,
  // best first, the lower id first on ties, as Model::forward_top gives them).
  int32_t sample_top(std::span<const int32_t> ids, std::span<const float> values);

 private:
  int32_t draw(std::span<const int32_t> idx, const float* value_of_id, const float* value_at);
  int32_t pick(std::span<const int32_t> idx, std::span<const double> prob);
  SamplingParams params_;
  std::mt19937_64 rng_;
};

// Index of the largest logit (the first one on ties, as torch.argmax).
int32_t argmax(std::span<const float> logits);

}  // namespace fh1
