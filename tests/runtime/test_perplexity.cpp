// Perplexity of the shipped tiny model on a held-out sample equals transformers' (saved by
// training/make_perplexity_fixture.py), and tokenization of the file equals HF tokenizers'.
#include <gtest/gtest.h>

#include <cmath>

#include "io/json_file.h"
#include "model/fixture_util.h"
#include "runtime/perplexity.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace fh1::test {
namespace {

const std::string kRepo = std::string(FH1_FIXTURES_DIR) + "/../..";

TEST(Perplexity, TinyModelMatchesTransformers) {
  const std::string model_dir = kRepo + "/models/falcon-h1-tiny";
  const std::string fx = std::string(FH1_FIXTURES_DIR) + "/perplexity/";
  const nlohmann::json expected = read_json_file(fx + "expected.json");
  const nlohmann::json ids_json = read_json_file(fx + "ids.json");
  const std::vector<int32_t> ref_ids =
      (ids_json.is_object() ? ids_json.at("ids") : ids_json).get<std::vector<int32_t>>();

  const Tokenizer tok = Tokenizer::from_dir(model_dir);
  const std::vector<int32_t> ids = tok.encode(read_text_file(fx + "heldout_sample.txt"), true);
  EXPECT_EQ(ids, ref_ids);

  Backend be;
  const Model model = Model::load(model_dir, *be.kernels);
  const PerplexityResult r = perplexity(model, ref_ids, 4096, 300);  // one window, several calls
  const double want = expected.at("perplexity").get<double>();
  EXPECT_EQ(r.predicted, expected.at("n_predicted").get<int64_t>());
  EXPECT_NEAR(r.perplexity / want, 1.0, 1e-3) << "ours " << r.perplexity << ", transformers " << want;
}

TEST(Perplexity, WindowsRestartTheState) {
  const std::string model_dir = kRepo + "/models/falcon-h1-tiny";
  Backend be;
  const Model model = Model::load(model_dir, *be.kernels);
  const std::vector<int32_t> ids = {1, 100, 200, 300, 400, 500, 600, 700, 800};
  const PerplexityResult whole = perplexity(model, ids, 100);
  EXPECT_EQ(whole.predicted, 8);
  const PerplexityResult windows = perplexity(model, ids, 4);  // [0,4) [4,8) [8,9): 3 + 3 + 0
  EXPECT_EQ(windows.predicted, 6);
  // the first window's scores equal the whole run's first three
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(windows.token_nll[i], whole.token_nll[i], 1e-4);
  EXPECT_THROW(perplexity(model, std::vector<int32_t>{1}, 10), Error);
}

}  // namespace
}  // namespace fh1::test
