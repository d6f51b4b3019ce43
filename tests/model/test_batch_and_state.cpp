// Several sequences in one batch give what each gives alone; state snapshots resume exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "model/fixture_util.h"
#include "util/error.h"

namespace fh1::test {
namespace {

std::vector<float> rows(const std::vector<float>& all, size_t first, size_t n, size_t V) {
  return std::vector<float>(all.begin() + static_cast<std::ptrdiff_t>(first * V),
                            all.begin() + static_cast<std::ptrdiff_t>((first + n) * V));
}

class BatchTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchTest, MixedBatchEqualsEachSequenceAlone) {
  const Fixture f = load_fixture(GetParam());
  Backend be;
  const Model model = Model::load(f.dir, *be.kernels);
  const size_t V = static_cast<size_t>(model.config().vocab_size);
  const std::span<const int32_t> ids(f.prompt_ids);
  // Three sequences of different lengths; the third already has a past.
  ASSERT_GE(ids.size(), 20u);
  const auto a = ids.subspan(0, 19), b = ids.subspan(5, 3), c_past = ids.subspan(0, 9), c = ids.subspan(9);

  SequenceState sa = model.new_state(), sb = model.new_state(), sc = model.new_state();
  model.forward(sc, c_past);
  const auto alone_a = model.forward(sa, a, true);
  const auto alone_b = model.forward(sb, b, false);
  const auto alone_c = model.forward(sc, c, true);

  SequenceState ba = model.new_state(), bb = model.new_state(), bc = model.new_state();
  model.forward(bc, c_past);
  const BatchItem batch[] = {{&ba, a, true}, {&bb, b, false}, {&bc, c, true}};
  const auto together = model.forward(batch);
  ASSERT_EQ(together.size(), (a.size() + 1 + c.size()) * V);
  EXPECT_LE(relative_max_diff(rows(together, 0, a.size(), V), alone_a), 1e-5);
  EXPECT_LE(relative_max_diff(rows(together, a.size(), 1, V), alone_b), 1e-5);
  EXPECT_LE(relative_max_diff(rows(together, a.size() + 1, c.size(), V), alone_c), 1e-5);

  // Then a few decode steps of all three together, against each alone.
  for (int step = 0; step < 4; ++step) {
    const int32_t ta = ids[static_cast<size_t>(30 + step) % ids.size()], tb = ids[static_cast<size_t>(step)],
                  tc = ids[static_cast<size_t>(2 * step + 1)];
    const auto la = model.forward(sa, std::span<const int32_t>(&ta, 1));
    const auto lb = model.forward(sb, std::span<const int32_t>(&tb, 1));
    const auto lc = model.forward(sc, std::span<const int32_t>(&tc, 1));
    const BatchItem dec[] = {{&ba, {&ta, 1}, false}, {&bb, {&tb, 1}, false}, {&bc, {&tc, 1}, false}};
    const auto lt = model.forward(dec);
    EXPECT_LE(relative_max_diff(rows(lt, 0, 1, V), la), 1e-5) << "step " << step;
    EXPECT_LE(relative_max_diff(rows(lt, 1, 1, V), lb), 1e-5) << "step " << step;
    EXPECT_LE(relative_max_diff(rows(lt, 2, 1, V), lc), 1e-5) << "step " << step;
  }
  EXPECT_EQ(bc.n_past(), static_cast<int64_t>(c_past.size() + c.size() + 4));
}

// forward_top gives the k best of what forward gives, row by row: best first, lower id first on
// ties (the backend's top_k_rows), for a batch with every logit of one sequence and the last of
// another, k clamped to the vocabulary.
TEST_P(BatchTest, ForwardTopIsTheBestOfForward) {
  const Fixture f = load_fixture(GetParam());
  Backend be;
  const Model model = Model::load(f.dir, *be.kernels);
  const int64_t V = model.config().vocab_size;
  const std::span<const int32_t> ids(f.prompt_ids);
  ASSERT_GE(ids.size(), 12u);
  for (int k : {1, 7, static_cast<int>(V) + 5}) {
    SequenceState a1 = model.new_state(), b1 = model.new_state(), a2 = model.new_state(), b2 = model.new_state();
    const BatchItem full[] = {{&a1, ids.subspan(0, 5), true}, {&b1, ids.subspan(3, 7), false}};
    const BatchItem top_batch[] = {{&a2, ids.subspan(0, 5), true}, {&b2, ids.subspan(3, 7), false}};
    const std::vector<float> logits = model.forward(full);
    const Model::TopLogits top = model.forward_top(top_batch, k);
    const int64_t rows = 6;
    ASSERT_EQ(top.k, std::min<int64_t>(k, V));
    ASSERT_EQ(logits.size(), static_cast<size_t>(rows * V));
    ASSERT_EQ(top.ids.size(), static_cast<size_t>(rows * top.k));
    for (int64_t r = 0; r < rows; ++r) {
      const float* v = logits.data() + r * V;
      std::vector<int32_t> order(static_cast<size_t>(V));
      for (int64_t i = 0; i < V; ++i) order[static_cast<size_t>(i)] = static_cast<int32_t>(i);
      std::stable_sort(order.begin(), order.end(), [v](int32_t x, int32_t y) { return v[x] > v[y]; });
      for (int j = 0; j < top.k; ++j) {
        const size_t at = static_cast<size_t>(r * top.k + j);
        ASSERT_EQ(top.ids[at], order[static_cast<size_t>(j)]) << "row " << r << ", rank " << j << ", k " << k;
        ASSERT_EQ(top.values[at], v[order[static_cast<size_t>(j)]]);
      }
    }
  }
}

// What sampling without top-k asks of forward_top: per row the softmax sum and the draw in
// vocabulary order (softmax_draw of forward()'s row), rows skipped at inv_t 0, no best logits
// at k 0, and any row of the logits on request.
TEST_P(BatchTest, ForwardTopSumsAndDrawsAsTheRows) {
  const Fixture f = load_fixture(GetParam());
  Backend be;
  const Model model = Model::load(f.dir, *be.kernels);
  const int64_t V = model.config().vocab_size;
  const std::span<const int32_t> ids(f.prompt_ids);
  SequenceState a1 = model.new_state(), b1 = model.new_state(), a2 = model.new_state(), b2 = model.new_state();
  const BatchItem full[] = {{&a1, ids.subspan(0, 4), true}, {&b1, ids.subspan(3, 7), false}};
  const BatchItem top_batch[] = {{&a2, ids.subspan(0, 4), true}, {&b2, ids.subspan(3, 7), false}};
  const std::vector<float> logits = model.forward(full);
  Model::TopRequest req;
  req.k = 0;
  req.inv_t = {1.0, 0.0, 1.0 / 0.7, 2.0, 1.0};
  req.u = {0.25, 0.5, -1.0, 0.999, 0.0};
  const Model::TopLogits top = model.forward_top(top_batch, req);
  ASSERT_EQ(top.k, 0);
  EXPECT_TRUE(top.ids.empty());
  ASSERT_EQ(top.sums.size(), 5u);
  for (int64_t r = 0; r < 5; ++r) {
    const float* v = logits.data() + r * V;
    const SoftmaxDraw d = softmax_draw(v, V, req.inv_t[r], req.u[r]);
    const size_t i = static_cast<size_t>(r);
    if (req.inv_t[i] == 0.0) {
      EXPECT_EQ(top.sums[i], 0.0);
      EXPECT_EQ(top.drawn[i], -1);
    } else {
      EXPECT_EQ(top.sums[i], d.sum) << "row " << r;
      EXPECT_EQ(top.drawn[i], d.id) << "row " << r;
      EXPECT_EQ(d.id < 0, req.u[i] < 0.0);
    }
    EXPECT_EQ(top.row(r), std::vector<float>(v, v + V)) << "row " << r;
  }
  EXPECT_THROW(top.row(5), Error);
  req.u.pop_back();
  SequenceState c = model.new_state();
  const BatchItem wrong[] = {{&c, ids.subspan(0, 4), true}, {&b2, ids.subspan(3, 7), false}};
  EXPECT_THROW(model.forward_top(wrong, req), Error);
}

// Penalties and logprobs asked of forward_top: per row the lowered row's best logits, sum and
// draw, and the normalizer, best logits and raw values of the row as forward() gives it; rows
// without them untouched. Bad requests (a token lowered twice, outside the vocabulary, lists of
// the wrong length) are errors.
TEST_P(BatchTest, ForwardTopLowersAndGivesLogprobsAsTheRows) {
  const Fixture f = load_fixture(GetParam());
  Backend be;
  const Model model = Model::load(f.dir, *be.kernels);
  const int64_t V = model.config().vocab_size;
  const std::span<const int32_t> ids(f.prompt_ids);
  SequenceState a1 = model.new_state(), b1 = model.new_state(), a2 = model.new_state(), b2 = model.new_state();
  const BatchItem full[] = {{&a1, ids.subspan(0, 5), false}, {&b1, ids.subspan(2, 6), false}};
  const BatchItem top_batch[] = {{&a2, ids.subspan(0, 5), false}, {&b2, ids.subspan(2, 6), false}};
  const std::vector<float> logits = model.forward(full);
  Model::TopRequest req;
  req.k = 6;
  req.inv_t = {1.0 / 0.9, 0.0};
  req.u = {0.42, -1.0};
  req.lower = {{{3, 1.5f}, {7, -0.25f}, {static_cast<int32_t>(V - 1), 2.0f}}, {}};
  req.logprobs = {-1, 4};
  const Model::TopLogits top = model.forward_top(top_batch, req);
  for (int64_t r = 0; r < 2; ++r) {
    const size_t i = static_cast<size_t>(r);
    std::vector<float> row(logits.begin() + r * V, logits.begin() + (r + 1) * V), lowered = row;
    for (const auto& [id, amount] : req.lower[i]) lowered[static_cast<size_t>(id)] -= amount;
    EXPECT_EQ(top.row(r), lowered) << "row " << r;
    std::vector<int32_t> order(static_cast<size_t>(V));
    for (int64_t j = 0; j < V; ++j) order[static_cast<size_t>(j)] = static_cast<int32_t>(j);
    auto best_first = [](const std::vector<float>& v) {
      return [&v](int32_t x, int32_t y) { return v[x] > v[y] || (v[x] == v[y] && x < y); };
    };
    std::vector<int32_t> lorder = order;
    std::sort(lorder.begin(), lorder.end(), best_first(lowered));
    for (int j = 0; j < top.k; ++j) EXPECT_EQ(top.ids[i * 6 + j], lorder[j]) << "row " << r;
    if (req.inv_t[i] > 0.0) {
      const SoftmaxDraw d = softmax_draw(lowered.data(), V, req.inv_t[i], req.u[i]);
      EXPECT_EQ(top.sums[i], d.sum);
      EXPECT_EQ(top.drawn[i], d.id);
    }
    for (int32_t id : {3, 7, static_cast<int32_t>(V - 1), 0}) EXPECT_EQ(top.raw(r, id), row[static_cast<size_t>(id)]);
    if (req.logprobs[i] < 0) {
      EXPECT_TRUE(std::isnan(top.log_z[i]));
      continue;
    }
    std::sort(order.begin(), order.end(), best_first(row));
    double sum = 0.0;
    for (float v : row) sum += std::exp(static_cast<double>(v) - row[order[0]]);
    EXPECT_EQ(top.log_z[i], row[order[0]] + std::log(sum));
    ASSERT_EQ(top.lp_k, 4);
    for (int j = 0; j < 4; ++j) EXPECT_EQ(top.lp_ids[i * 4 + j], order[j]);
  }
  SequenceState c = model.new_state();
  const BatchItem again[] = {{&c, ids.subspan(0, 5), false}};
  Model::TopRequest bad;
  bad.lower = {{{3, 1.0f}, {3, 2.0f}}};
  EXPECT_THROW(model.forward_top(again, bad), Error);
  bad.lower = {{{static_cast<int32_t>(V), 1.0f}}};
  EXPECT_THROW(model.forward_top(again, bad), Error);
  bad.lower = {{}, {}};
  EXPECT_THROW(model.forward_top(again, bad), Error);
  bad.lower.clear();
  bad.logprobs = {1, 2};
  EXPECT_THROW(model.forward_top(again, bad), Error);
  EXPECT_EQ(c.n_past(), 0);  // a bad request is refused before the forward pass
}

TEST_P(BatchTest, SnapshotResumesExactlyAndResetStartsOver) {
  const Fixture f = load_fixture(GetParam());
  Backend be;
  const Model model = Model::load(f.dir, *be.kernels);
  const std::span<const int32_t> ids(f.prompt_ids);
  SequenceState s = model.new_state();
  model.forward(s, ids.subspan(0, 12));
  SequenceState snap = s.clone();
  const auto cont = model.forward(s, ids.subspan(12, 8), true);
  const auto again = model.forward(snap, ids.subspan(12, 8), true);
  EXPECT_EQ(cont, again);  // same arithmetic on the same state: bit-identical

  s.reset();
  EXPECT_EQ(s.n_past(), 0);
  const auto fresh = model.forward(s, ids, true);
  EXPECT_LE(relative_max_diff(fresh, f.logits), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(AllFixtures, BatchTest, ::testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });

TEST(BatchErrors, BadTokenIdIsAnErrorAndLeavesStateUntouched) {
  const Fixture f = load_fixture(fixture_names().front());
  Backend be;
  const Model model = Model::load(f.dir, *be.kernels);
  SequenceState s = model.new_state();
  const std::vector<int32_t> bad = {1, 2, model.config().vocab_size};
  EXPECT_THROW(model.forward(s, bad), Error);
  const std::vector<int32_t> negative = {-1};
  EXPECT_THROW(model.forward(s, negative), Error);
  EXPECT_EQ(s.n_past(), 0);
  const std::vector<int32_t> none;
  EXPECT_THROW(model.forward(s, none), Error);
  const std::vector<int32_t> ok = {1, 2};
  const BatchItem twice[] = {{&s, ok, false}, {&s, ok, false}};
  EXPECT_THROW(model.forward(twice), Error);
  EXPECT_EQ(s.n_past(), 0);
}

}  // namespace
}  // namespace fh1::test
