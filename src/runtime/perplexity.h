// Perplexity of a token sequence: exp(mean negative log-likelihood of each token given the ones
// before it). Long sequences are cut into consecutive windows of at most `window` tokens, each
// run from an empty state (the first token of a window is context only, not predicted).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/model.h"

namespace fh1 {

struct PerplexityResult {
  double mean_nll = 0.0;
  double perplexity = 0.0;
  int64_t predicted = 0;           // tokens scored
  std::vector<double> token_nll;   // per scored token, in order
};

// on_progress(done, total) after each forward call, for long files.
PerplexityResult perplexity(const Model& model, std::span<const int32_t> ids, int64_t window, int64_t chunk = 512,
                            const std::function<void(int64_t, int64_t)>& on_progress = nullptr);

}  // namespace fh1
