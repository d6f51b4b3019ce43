// config.json in every form transformers writes, and every way it can be wrong; and checkpoints
// that disagree with their config.
#include <gtest/gtest.h>

#include <cmath>

#include "io/json_file.h"
#include "io/temp_dir.h"
#include "kernels/kernels.h"
#include "model/config.h"
#include "model/model.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace fh1::test {
namespace {

const std::string kFixtures = std::string(FH1_FIXTURES_DIR) + "/models/";

nlohmann::json base_config() { return read_json_file(kFixtures + "norm_off_g1_tied/config.json"); }

std::string error_of(const nlohmann::json& j) {
  try {
    ModelConfig::from_json(j, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Config, RelaxedJsonReadsPythonInfinity) {
  const auto j = parse_json_relaxed(R"({"a": [0.0, Infinity], "b": -Infinity, "c": NaN, "s": "Infinity in a string"})", "x");
  EXPECT_TRUE(std::isinf(json_number(j["a"][1], "a")));
  EXPECT_LT(json_number(j["b"], "b"), 0);
  EXPECT_TRUE(std::isnan(json_number(j["c"], "c")));
  EXPECT_EQ(j["s"], "Infinity in a string");
  EXPECT_TRUE(std::isinf(json_number(nlohmann::json::parse(R"({"__float__": "Infinity"})"), "x")));
  EXPECT_THROW(json_number(nlohmann::json("abc"), "x"), Error);
  EXPECT_THROW(parse_json_relaxed("{\"a\": ", "x"), Error);
}

TEST(Config, TimeStepLimitForms) {
  auto j = base_config();
  j["time_step_limit"] = nlohmann::json::parse(R"([0.0, {"__float__": "Infinity"}])");
  EXPECT_TRUE(std::isinf(ModelConfig::from_json(j, "c").time_step_max));
  j["time_step_limit"] = {0.05, 1.5};
  const auto c = ModelConfig::from_json(j, "c");
  EXPECT_FLOAT_EQ(c.time_step_min, 0.05);
  EXPECT_FLOAT_EQ(c.time_step_max, 1.5);
  j["time_step_limit"] = {2.0, 1.0};
  EXPECT_NE(error_of(j).find("time_step_limit"), std::string::npos);
  j["time_step_limit"] = {1.0};
  EXPECT_NE(error_of(j).find("time_step_limit"), std::string::npos);
}

TEST(Config, RopeThetaInEitherPlace) {
  auto j = base_config();
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e11}};
  EXPECT_DOUBLE_EQ(ModelConfig::from_json(j, "c").rope_theta, 1e11);
  j.erase("rope_parameters");
  j["rope_theta"] = 12345.0;
  EXPECT_DOUBLE_EQ(ModelConfig::from_json(j, "c").rope_theta, 12345.0);
  j.erase("rope_theta");
  EXPECT_DOUBLE_EQ(ModelConfig::from_json(j, "c").rope_theta, 10000.0);  // transformers' default
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e11}, {"factor", 4.0}};
  EXPECT_NE(error_of(j).find("yarn"), std::string::npos);
}

TEST(Config, MambaWidthsAutoAndNull) {
  auto j = base_config();
  const int hidden = j["hidden_size"];
  j["mamba_d_ssm"] = nullptr;
  j["mamba_expand"] = 2;
  j["mamba_d_head"] = "auto";
  const auto c = ModelConfig::from_json(j, "c");
  EXPECT_EQ(c.mamba_d_ssm, 2 * hidden);
  EXPECT_EQ(c.mamba_d_head * c.mamba_n_heads, c.mamba_d_ssm);
  j["mamba_d_head"] = "big";
  EXPECT_NE(error_of(j).find("mamba_d_head"), std::string::npos);
  j["mamba_d_head"] = 7;
  EXPECT_NE(error_of(j).find("mamba_d_head"), std::string::npos);
}

TEST(Config, EosAsIntOrListAndExtraFieldsIgnored) {
  auto j = base_config();
  j["eos_token_id"] = 11;
  EXPECT_EQ(ModelConfig::from_json(j, "c").eos_token_ids, std::vector<int>{11});
  j["eos_token_id"] = {11, 12};
  EXPECT_EQ(ModelConfig::from_json(j, "c").eos_token_ids, (std::vector<int>{11, 12}));
  j["eos_token_id"] = "eleven";
  EXPECT_NE(error_of(j).find("eos_token_id"), std::string::npos);
  j["eos_token_id"] = 11;
  j["some_future_field"] = {{"x", 1}};
  j["architectures"] = {"FalconH1ForCausalLM"};
  EXPECT_EQ(error_of(j), "");
}

TEST(Config, WrongOrMissingFieldsAreNamed) {
  auto j = base_config();
  j["model_type"] = "llama";
  EXPECT_NE(error_of(j).find("falcon_h1"), std::string::npos);
  j.erase("model_type");
  EXPECT_NE(error_of(j).find("model_type"), std::string::npos);
  j = base_config();
  j.erase("hidden_size");
  EXPECT_NE(error_of(j).find("missing required field 'hidden_size'"), std::string::npos);
  j = base_config();
  j["num_hidden_layers"] = "two";
  EXPECT_NE(error_of(j).find("num_hidden_layers"), std::string::npos);
  j = base_config();
  j["vocab_size"] = -5;
  EXPECT_NE(error_of(j).find("vocab_size"), std::string::npos);
  j = base_config();
  j["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(j).find("num_key_value_heads"), std::string::npos);
  j = base_config();
  j["mamba_n_groups"] = 5;
  EXPECT_NE(error_of(j).find("mamba_n_groups"), std::string::npos);
  j = base_config();
  j["mamba_rms_norm"] = "yes";
  EXPECT_NE(error_of(j).find("mamba_rms_norm"), std::string::npos);
  j = base_config();
  j["ssm_multipliers"] = {1.0, 2.0};
  EXPECT_NE(error_of(j).find("ssm_multipliers"), std::string::npos);
  EXPECT_NE(error_of(nlohmann::json::array()).find("object"), std::string::npos);
}

TEST(Config, StateBytes) {
  const auto c = ModelConfig::from_json(base_config(), "c");
  const uint64_t fixed = c.state_bytes(0);
  EXPECT_GT(fixed, 0u);
  EXPECT_EQ(c.state_bytes(100) - fixed, 100u * 2 * c.kv_dim() * 4 * c.num_hidden_layers);
}

// A copy of a fixture whose config.json is edited by `edit`.
struct EditedModel {
  TempDir dir;
  EditedModel(const std::string& fixture, const std::function<void(nlohmann::json&)>& edit) {
    for (const auto& e : std::filesystem::directory_iterator(kFixtures + fixture))
      std::filesystem::copy(e.path(), dir.path / e.path().filename());
    auto j = read_json_file(dir.path / "config.json");
    edit(j);
    dir.write("config.json", j.dump());
  }
};

std::string load_error(const std::filesystem::path& dir) {
  ThreadPool pool(1);
  auto k = make_cpu_kernels(pool);
  try {
    Model::load(dir, *k);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelLoad, ShapeMismatchNamesTensorAndShapes) {
  EditedModel m("norm_off_g1_tied", [](auto& j) { j["intermediate_size"] = 100; });
  const std::string e = load_error(m.dir.path);
  EXPECT_NE(e.find("feed_forward.gate_proj.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[100,"), std::string::npos) << e;
}

TEST(ModelLoad, MissingTensors) {
  EditedModel bias("norm_off_g1_tied", [](auto& j) { j["attention_bias"] = true; });
  EXPECT_NE(load_error(bias.dir.path).find("missing tensor 'model.layers.0.self_attn.q_proj.bias'"), std::string::npos);
  EditedModel untied("norm_off_g1_tied", [](auto& j) { j["tie_word_embeddings"] = false; });
  EXPECT_NE(load_error(untied.dir.path).find("lm_head.weight"), std::string::npos);
  EditedModel norm("norm_off_g1_tied", [](auto& j) { j["mamba_rms_norm"] = true; });
  EXPECT_NE(load_error(norm.dir.path).find("mamba.norm.weight"), std::string::npos);
  EditedModel deeper("norm_off_g1_tied", [](auto& j) { j["num_hidden_layers"] = 9; });
  EXPECT_NE(load_error(deeper.dir.path).find("missing tensor 'model.layers."), std::string::npos);
}

TEST(ModelLoad, ExtraTensorsThatContradictTheConfig) {
  EditedModel m("norm_gate_after_g2_untied_bias", [](auto& j) { j["attention_bias"] = false; });
  EXPECT_NE(load_error(m.dir.path).find("bias is off"), std::string::npos);
}

TEST(ModelLoad, WrongDtype) {
  EditedModel m("norm_off_g1_tied", [](auto&) {});
  // Relabel one BF16 tensor as I16 (same size; the header keeps its length: JSON allows the space).
  std::string bytes = read_text_file(m.dir.path / "model.safetensors");
  const size_t at = bytes.find("\"model.embed_tokens.weight\":{\"dtype\":\"BF16\"");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(bytes.find("\"BF16\"", at + 28), 6, "\"I16\" ");
  m.dir.write("model.safetensors", bytes);
  const std::string e = load_error(m.dir.path);
  EXPECT_NE(e.find("model.embed_tokens.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("found I16"), std::string::npos) << e;
}

TEST(ModelLoad, MissingFilesAndUnknownModelType) {
  TempDir empty;
  EXPECT_NE(load_error(empty.path).find("config.json"), std::string::npos);
  EXPECT_NE(load_error(empty.path / "nope").find("not a directory"), std::string::npos);
  EditedModel m("norm_off_g1_tied", [](auto& j) { j["model_type"] = "mamba2"; });
  EXPECT_NE(load_error(m.dir.path).find("falcon_h1"), std::string::npos);
  EditedModel w("norm_off_g1_tied", [](auto&) {});
  std::filesystem::remove(w.dir.path / "model.safetensors");
  EXPECT_NE(load_error(w.dir.path).find("no model.safetensors"), std::string::npos);
  // truncated weights
  EditedModel t("norm_off_g1_tied", [](auto&) {});
  const std::string bytes = read_text_file(t.dir.path / "model.safetensors");
  t.dir.write("model.safetensors", bytes.substr(0, bytes.size() / 2));
  EXPECT_NE(load_error(t.dir.path).find("past the end"), std::string::npos);
}

}  // namespace
}  // namespace fh1::test
