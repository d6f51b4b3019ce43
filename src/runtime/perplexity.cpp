#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace fh1 {

PerplexityResult perplexity(const Model& model, std::span<const int32_t> ids, int64_t window, int64_t chunk,
                            const std::function<void(int64_t, int64_t)>& on_progress) {
  if (ids.size() < 2) throw Error("perplexity needs at least 2 tokens, got " + std::to_string(ids.size()));
  if (window < 2) throw Error("perplexity window must be at least 2 tokens");
  if (chunk < 1) chunk = window;
  const size_t V = static_cast<size_t>(model.config().vocab_size);
  const int64_t n = static_cast<int64_t>(ids.size());
  PerplexityResult r;
  double sum = 0.0;
  SequenceState state = model.new_state(std::min(window, n));
  for (int64_t w0 = 0; w0 < n - 1; w0 += window) {
    const int64_t w1 = std::min(n, w0 + window);
    state.reset();
    for (int64_t c0 = w0; c0 < w1; c0 += chunk) {
      const int64_t c1 = std::min(w1, c0 + chunk);
      const std::vector<float> logits = model.forward(state, ids.subspan(static_cast<size_t>(c0), static_cast<size_t>(c1 - c0)), true);
      for (int64_t t = c0; t < c1 && t + 1 < w1; ++t) {
        const float* row = logits.data() + static_cast<size_t>(t - c0) * V;
        const double mx = *std::max_element(row, row + V);
        double z = 0.0;
        for (size_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(row[v]) - mx);
        const double nll = mx + std::log(z) - row[ids[static_cast<size_t>(t + 1)]];
        r.token_nll.push_back(nll);
        sum += nll;
      }
      if (on_progress) on_progress(c1, n);
    }
  }
  r.predicted = static_cast<int64_t>(r.token_nll.size());
  r.mean_nll = sum / static_cast<double>(r.predicted);
  r.perplexity = std::exp(r.mean_nll);
  return r;
}

}  // namespace fh1
