// The sampler: greedy, filters, reproducibility, bad parameters.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "kernels/kernels.h"
#include "runtime/sampler.h"
#include "util/error.h"

namespace fh1 {
namespace {

TEST(Sampler, GreedyIsArgmaxFirstOnTies) {
  const std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f};
  Sampler s({});
  EXPECT_EQ(s.sample(logits), 1);
  EXPECT_EQ(argmax(logits), 1);
}

// Drawing from the best few logits (Model::forward_top's candidates) gives the same tokens, draw
// for draw, as drawing from all of them, for greedy and top-k with every filter, over logits with
// many ties; candidates_needed() says how many suffice.
TEST(Sampler, SampleTopDrawsWhatSampleDraws) {
  const SamplingParams cases[] = {{0.0f, 0, 1.0f, 0.0f, 1},  {0.0f, 40, 0.5f, 0.1f, 2}, {0.7f, 1, 1.0f, 0.0f, 3},
                                  {1.0f, 5, 1.0f, 0.0f, 4},  {0.8f, 50, 0.9f, 0.02f, 5}, {1.3f, 300, 0.95f, 0.0f, 6},
                                  {2.0f, 257, 1.0f, 0.3f, 7}};
  std::mt19937 rng(99);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const size_t V = 257;
  for (const SamplingParams& p : cases) {
    Sampler all(p), top(p);
    const int need = top.candidates_needed();
    ASSERT_EQ(need, p.temperature == 0.0f ? 1 : p.top_k);
    const size_t k = std::min(V, static_cast<size_t>(need));
    for (int draw = 0; draw < 300; ++draw) {
      std::vector<float> logits(V);
      for (float& x : logits) x = std::round(normal(rng) * 4.0f) / 4.0f;  // many equal values
      std::vector<int32_t> order(V);
      for (size_t i = 0; i < V; ++i) order[i] = static_cast<int32_t>(i);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
      order.resize(k);
      std::vector<float> values(k);
      for (size_t j = 0; j < k; ++j) values[j] = logits[static_cast<size_t>(order[j])];
      ASSERT_EQ(top.sample_top(order, values), all.sample(logits)) << "temperature " << p.temperature << ", top-k "
                                                                  << p.top_k << ", draw " << draw;
    }
  }
  Sampler needs_all({1.0f, 0, 0.9f, 0.0f, 1});
  EXPECT_EQ(needs_all.candidates_needed(), 0);
  const std::vector<int32_t> one = {3};
  const std::vector<float> val = {1.0f};
  EXPECT_THROW(needs_all.sample_top(one, val), Error);
}

// Without top-k, top-p and min-p keep a prefix of the tokens by probability: the sampler sorts
// only as far as the cuts. Against the same draws over a full sort (the probabilities of the
// whole vocabulary, normalized the same way), for cuts near the top and far down.
TEST(Sampler, TopPAndMinPWithoutTopKDrawAsOverAFullSort) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t V = 5000;
  for (const auto& [top_p, min_p] : {std::pair{0.5f, 0.0f}, {0.9f, 0.0f}, {0.999f, 0.0f}, {1.0f, 0.05f},
                                     {1.0f, 0.0005f}, {0.95f, 0.01f}}) {
    const SamplingParams p{0.9f, 0, top_p, min_p, 77};
    Sampler s(p);
    std::mt19937_64 ref_rng(p.seed);
    for (int draw = 0; draw < 200; ++draw) {
      std::vector<float> logits(V);
      for (float& x : logits) x = std::round(normal(rng) * 16.0f) / 16.0f;
      // The reference: every probability, the tokens fully sorted, both filters, the draw.
      const double inv_t = 1.0 / static_cast<double>(p.temperature);
      const double top = static_cast<double>(*std::max_element(logits.begin(), logits.end())) * inv_t;
      std::vector<double> e(V);
      double sum = 0.0;
      for (size_t i = 0; i < V; ++i) sum += e[i] = std::exp(static_cast<double>(logits[i]) * inv_t - top);
      std::vector<int32_t> order(V);
      for (size_t i = 0; i < V; ++i) order[i] = static_cast<int32_t>(i);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
      std::vector<double> prob(V);
      for (size_t i = 0; i < V; ++i) prob[i] = e[static_cast<size_t>(order[i])] / sum;
      size_t n = V;
      if (top_p < 1.0f) {
        double mass = 0.0;
        size_t keep = 0;
        while (keep < n) {
          mass += prob[keep++];
          if (mass >= top_p) break;
        }
        n = keep;
      }
      if (min_p > 0.0f) {
        const double floor = prob[0] * min_p;
        size_t keep = 1;
        while (keep < n && prob[keep] >= floor) ++keep;
        n = keep;
      }
      double total = 0.0;
      for (size_t i = 0; i < n; ++i) total += prob[i];
      double r = std::uniform_real_distribution<double>(0.0, total)(ref_rng);
      int32_t want = order[n - 1];
      for (size_t i = 0; i < n; ++i) {
        r -= prob[i];
        if (r < 0.0) {
          want = order[i];
          break;
        }
      }
      ASSERT_EQ(s.sample(logits), want) << "top-p " << top_p << ", min-p " << min_p << ", draw " << draw;
    }
  }
}

// What a backend computes where the logits are (Sampler::row_needs: the best logits, the softmax
// sum, the draw in vocabulary order with the sampler's uniform) gives the same tokens, draw for
// draw, as sample() over the whole row, for every kind of sampler; a top-p or min-p cut beyond
// the candidates asks for the whole row.
TEST(Sampler, DrawsFromRowNeedsEqualSample) {
  const SamplingParams cases[] = {{0.0f, 0, 1.0f, 0.0f, 1},   {0.8f, 20, 0.9f, 0.0f, 2},  {1.0f, 0, 1.0f, 0.0f, 3},
                                  {0.6f, 0, 1.0f, 0.0f, 4},   {1.0f, 0, 0.9f, 0.0f, 5},   {1.0f, 0, 1.0f, 0.05f, 6},
                                  {1.5f, 0, 0.999f, 0.0f, 7}, {2.0f, 0, 0.95f, 0.001f, 8}, {1.0f, 0, 1.0f, 1e-6f, 9}};
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t V = 3000;
  for (const SamplingParams& p : cases) {
    Sampler all(p), part(p);
    const Sampler::RowNeeds needs = part.row_needs();
    EXPECT_EQ(needs.in_order, p.temperature > 0.0f && p.top_k == 0 && p.top_p >= 1.0f && p.min_p <= 0.0f);
    EXPECT_EQ(needs.inv_t > 0.0, p.temperature > 0.0f && p.top_k == 0);
    int full_rows = 0;
    for (int draw = 0; draw < 200; ++draw) {
      const float scale = draw % 2 ? 0.3f : 3.0f;  // flat rows push top-p's cut past the candidates
      std::vector<float> logits(V);
      for (float& x : logits) x = std::round(normal(rng) * scale * 8.0f) / 8.0f;  // ties
      std::vector<int32_t> order(V);
      for (size_t i = 0; i < V; ++i) order[i] = static_cast<int32_t>(i);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
      order.resize(std::min(V, static_cast<size_t>(needs.k)));
      std::vector<float> values(order.size());
      for (size_t j = 0; j < order.size(); ++j) values[j] = logits[static_cast<size_t>(order[j])];
      const double u = needs.in_order ? part.take_order_uniform() : -1.0;
      const SoftmaxDraw d = softmax_draw(logits.data(), static_cast<int64_t>(V), needs.inv_t, u);
      const int32_t got = part.sample_needs(order, values, d.sum, d.id, V, [&] {
        ++full_rows;
        return logits;
      });
      ASSERT_EQ(got, all.sample(logits)) << "temperature " << p.temperature << ", top-k " << p.top_k << ", top-p "
                                         << p.top_p << ", min-p " << p.min_p << ", draw " << draw;
    }
    if (p.top_p == 0.999f) {
      EXPECT_GT(full_rows, 0) << "no cut beyond the candidates was tried";
    }
    if (needs.in_order || !part.uses_softmax_sum()) {
      EXPECT_EQ(full_rows, 0);
    }
  }
  Sampler greedy({});
  EXPECT_THROW(greedy.take_order_uniform(), Error);
}

TEST(Sampler, TopKOneIsGreedy) {
  const std::vector<float> logits = {0.1f, 0.2f, 5.0f, 0.3f};
  Sampler s({1.0f, 1, 1.0f, 0.0f, 42});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(logits), 2);
}

TEST(Sampler, TopPKeepsTheSmallestPrefixReachingTheMass) {
  // probabilities ~ 0.64, 0.24, 0.09, 0.03: top-p 0.7 keeps the first two only
  const std::vector<float> logits = {3.0f, 2.0f, 1.0f, 0.0f};
  Sampler s({1.0f, 0, 0.7f, 0.0f, 7});
  std::map<int, int> seen;
  for (int i = 0; i < 2000; ++i) ++seen[s.sample(logits)];
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], 0);
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_EQ(seen.count(3), 0u);
}

TEST(Sampler, MinPDropsUnlikelyTokens) {
  const std::vector<float> logits = {3.0f, 2.9f, 0.0f, -5.0f};
  Sampler s({1.0f, 0, 1.0f, 0.5f, 3});
  for (int i = 0; i < 1000; ++i) EXPECT_LT(s.sample(logits), 2);
}

TEST(Sampler, FrequenciesFollowTheSoftmax) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // 1 : 3
  Sampler s({1.0f, 0, 1.0f, 0.0f, 11});
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.sample(logits);
  EXPECT_NEAR(static_cast<double>(ones) / n, 0.75, 0.02);
}

TEST(Sampler, SameSeedSameDraws) {
  std::vector<float> logits(1000);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>((i * 7919) % 101) / 10.0f;
  Sampler a({0.8f, 50, 0.9f, 0.01f, 123}), b({0.8f, 50, 0.9f, 0.01f, 123}), c({0.8f, 50, 0.9f, 0.01f, 124});
  int differ = 0;
  for (int i = 0; i < 100; ++i) {
    const int x = a.sample(logits);
    EXPECT_EQ(x, b.sample(logits));
    differ += x != c.sample(logits);
  }
  EXPECT_GT(differ, 0);
}

TEST(Sampler, BadParametersAreErrors) {
  EXPECT_THROW(Sampler({-1.0f, 0, 1.0f, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, -2, 1.0f, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 0.0f, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 1.5f, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 1.0f, 2.0f, 0}), Error);
}

}  // namespace
}  // namespace fh1
