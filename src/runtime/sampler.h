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

  // Without top-k (temperature > 0) a draw depends on the softmax of every logit. The backend
  // can sum it where the logits are (Kernels::softmax_rows, at inverse_temperature()) and,
  // without top-p and min-p, also draw from it in vocabulary order with the uniform that
  // take_order_uniform() hands out: the same draw as sample(), the random stream included.
  bool uses_softmax_sum() const { return params_.temperature > 0.0f && params_.top_k == 0; }
  bool draws_in_order() const { return uses_softmax_sum() && params_.top_p >= 1.0f && params_.min_p <= 0.0f; }
  double inverse_temperature() const { return 1.0 / static_cast<double>(params_.temperature); }
  // The uniform of the next draw in vocabulary order, taken from the stream now (draws_in_order()).
  double take_order_uniform();
  // With top-p or min-p: sample()'s draw from the best logits (as sample_top) and the softmax sum
  // of the whole row (softmax_draw(...).sum); -1, nothing drawn, when the cut lies beyond these
  // candidates (then sample() the whole row).
  int32_t sample_top_sum(std::span<const int32_t> ids, std::span<const float> values, double sum, size_t vocab);

  // What the next draw needs of its row of logits, where they are: the k best (0: none; larger
  // than the backend selects: copy the row), the softmax sum at inv_t (0: none), and whether it
  // draws in vocabulary order (then take_order_uniform() gives its uniform).
  struct RowNeeds {
    int k = 0;
    double inv_t = 0.0;
    bool in_order = false;
  };
  // The best logits a top-p or min-p cut is looked for among before the whole row is copied.
  static constexpr int kCutCandidates = 256;
  RowNeeds row_needs() const;
  // The draw from what row_needs() asked for: ids / values (its k best or more), sum, and drawn
  // (the backend's draw with take_order_uniform()'s value); full_row() when the cut lies beyond
  // the candidates. The same draw as sample() of the whole row.
  template <class FullRow>
  int32_t sample_needs(std::span<const int32_t> ids, std::span<const float> values, double sum, int32_t drawn,
                       size_t vocab, FullRow&& full_row) {
    if (!uses_softmax_sum()) return sample_top(ids, values);
    if (draws_in_order()) return drawn;
    const int32_t id = sample_top_sum(ids, values, sum, vocab);
    return id >= 0 ? id : sample(full_row());
  }

 private:
  int32_t draw(std::span<const int32_t> idx, const float* value_of_id, const float* value_at);
  int32_t pick(std::span<const int32_t> idx, std::span<const double> prob);
  SamplingParams params_;
  std::mt19937_64 rng_;
};

// Index of the largest logit (the first one on ties, as torch.argmax).
int32_t argmax(std::span<const float> logits);

}  // namespace fh1
