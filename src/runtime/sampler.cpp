#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "util/error.h"

namespace fh1 {

int32_t argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[static_cast<size_t>(best)]) best = static_cast<int32_t>(i);
  return best;
}

Sampler::Sampler(const SamplingParams& p) : params_(p), rng_(p.seed) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature))
    throw Error("temperature must be >= 0, got " + std::to_string(p.temperature));
  if (p.top_k < 0) throw Error("top-k must be >= 0, got " + std::to_string(p.top_k));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) throw Error("top-p must be in (0, 1], got " + std::to_string(p.top_p));
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) throw Error("min-p must be in [0, 1], got " + std::to_string(p.min_p));
}

int Sampler::candidates_needed() const {
  if (params_.temperature == 0.0f) return 1;
  return params_.top_k;
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (logits.empty()) throw Error("sample: empty logits");
  if (params_.temperature == 0.0f) return argmax(logits);
  const auto by_logit = [&](int32_t a, int32_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
           (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
  };
  std::vector<int32_t> idx;
  const auto all_ids = [&] {
    idx.resize(logits.size());
    std::iota(idx.begin(), idx.end(), 0);
  };
  if (params_.top_k > 0) {  // the softmax over the top-k candidates, best first
    all_ids();
    const size_t n = std::min(idx.size(), static_cast<size_t>(params_.top_k));
    std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(n), idx.end(), by_logit);
    idx.resize(n);
    return draw(idx, logits.data(), nullptr);
  }
  // No top-k: the softmax over the whole vocabulary. Only top-p and min-p care about the order
  // (each keeps a prefix of the tokens by probability), and then only as far as its cut: the
  // tokens are sorted progressively until both cuts are known, not all of them (a full sort of a
  // 131K vocabulary costs more than a GPU decode step).
  const double inv_t = inverse_temperature();
  if (draws_in_order())  // no cut: in vocabulary order
    return softmax_draw(logits.data(), static_cast<int64_t>(logits.size()), inv_t, take_order_uniform()).id;
  const double top = static_cast<double>(logits[static_cast<size_t>(argmax(logits))]) * inv_t;
  std::vector<double> e(logits.size());
  double sum = 0.0;
  for (size_t i = 0; i < e.size(); ++i) sum += e[i] = std::exp(static_cast<double>(logits[i]) * inv_t - top);
  all_ids();
  const size_t V = idx.size();
  const double floor = params_.min_p * (1.0 / sum);  // min-p's cut: probability below max * min_p (max is 1 / sum)
  std::vector<double> prob;
  for (size_t m = std::min<size_t>(V, 64);; m = std::min(V, m * 8)) {
    std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(m), idx.end(), by_logit);
    prob.resize(m);
    double mass = 0.0;
    bool cut = m == V;
    for (size_t i = 0; i < m; ++i) {
      prob[i] = e[static_cast<size_t>(idx[i])] / sum;
      mass += prob[i];
      cut = cut || (params_.top_p < 1.0f && mass >= params_.top_p) || (params_.min_p > 0.0f && prob[i] < floor);
    }
    if (cut) break;
  }
  idx.resize(prob.size());
  return pick(idx, prob);
}

int32_t Sampler::sample_top(std::span<const int32_t> ids, std::span<const float> values) {
  const int need = candidates_needed();
  if (need <= 0) throw Error("sample_top: this sampler needs every logit (top-k is not set)");
  if (ids.empty() || ids.size() != values.size()) throw Error("sample_top: no candidates, or ids and values differ in size");
  if (params_.temperature == 0.0f) return ids[0];
  // Fewer candidates than top-k only when the vocabulary itself is smaller: all of it, as sample().
  const size_t n = std::min(ids.size(), static_cast<size_t>(need));
  return draw(ids.first(n), nullptr, values.data());
}

// u * (b - a) + a with u from generate_canonical is how uniform_real_distribution(a, b) draws
// (libstdc++), so this is the value the draw took before it was split out.
double Sampler::take_order_uniform() {
  if (!draws_in_order()) throw Error("take_order_uniform: this sampler does not draw in vocabulary order");
  return std::generate_canonical<double, std::numeric_limits<double>::digits>(rng_);
}

Sampler::RowNeeds Sampler::row_needs() const {
  RowNeeds n;
  if (!uses_softmax_sum()) {
    n.k = candidates_needed();
    return n;
  }
  n.inv_t = inverse_temperature();
  n.in_order = draws_in_order();
  n.k = n.in_order ? 0 : kCutCandidates;
  return n;
}

int32_t Sampler::sample_top_sum(std::span<const int32_t> ids, std::span<const float> values, double sum,
                                size_t vocab) {
  if (!uses_softmax_sum() || draws_in_order()) throw Error("sample_top_sum: this sampler has no top-p or min-p cut");
  if (ids.empty() || ids.size() != values.size()) throw Error("sample_top_sum: no candidates, or ids and values differ in size");
  // As sample(): the probabilities of the best tokens, until top-p's mass or min-p's floor is
  // reached among them (or they are the whole vocabulary).
  const double inv_t = inverse_temperature();
  const double top = static_cast<double>(values[0]) * inv_t;
  const double floor = params_.min_p * (1.0 / sum);
  std::vector<double> prob(ids.size());
  double mass = 0.0;
  bool cut = ids.size() >= vocab;
  for (size_t i = 0; i < ids.size(); ++i) {
    prob[i] = std::exp(static_cast<double>(values[i]) * inv_t - top) / sum;
    mass += prob[i];
    cut = cut || (params_.top_p < 1.0f && mass >= params_.top_p) || (params_.min_p > 0.0f && prob[i] < floor);
  }
  if (!cut) return -1;
  return pick(ids, prob);
}

// Softmax of the candidates' logits / temperature (idx best first), then pick(). A candidate's
// logit is value_of_id[id] or, by position, value_at[i].
int32_t Sampler::draw(std::span<const int32_t> idx, const float* value_of_id, const float* value_at) {
  const auto logit = [&](size_t i) { return value_at ? value_at[i] : value_of_id[static_cast<size_t>(idx[i])]; };
  const size_t n = idx.size();
  const float inv_t = 1.0f / params_.temperature;
  const double top = static_cast<double>(logit(0)) * inv_t;
  std::vector<double> prob(n);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += prob[i] = std::exp(static_cast<double>(logit(i)) * inv_t - top);
  for (double& p : prob) p /= sum;
  return pick(idx, prob);
}

// The top-p and min-p filters over tokens best first with their probabilities, then the draw.
int32_t Sampler::pick(std::span<const int32_t> idx, std::span<const double> prob) {
  size_t n = idx.size();
  // top-p: the smallest prefix whose mass reaches top_p (at least one token).
  if (params_.top_p < 1.0f) {
    double mass = 0.0;
    size_t keep = 0;
    while (keep < n) {
      mass += prob[keep++];
      if (mass >= params_.top_p) break;
    }
    n = keep;
  }
  // min-p: drop tokens below min_p times the most likely one.
  if (params_.min_p > 0.0f) {
    const double floor = prob[0] * params_.min_p;
    size_t keep = 1;
    while (keep < n && prob[keep] >= floor) ++keep;
    n = keep;
  }
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) total += prob[i];
  double r = std::uniform_real_distribution<double>(0.0, total)(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= prob[i];
    if (r < 0.0) return idx[i];
  }
  return idx[n - 1];
}

}  // namespace fh1
