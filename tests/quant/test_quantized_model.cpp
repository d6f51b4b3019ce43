// Whole models quantized by quantize_model(): they load mapped, stay close to the float model,
// keep prefill and decode consistent, and lose little perplexity on the shipped tiny model.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "io/json_file.h"
#include "io/safetensors.h"
#include "io/temp_dir.h"
#include "model/fixture_util.h"
#include "quant/quantize_model.h"
#include "runtime/perplexity.h"
#include "util/error.h"

namespace fh1 {
namespace {

namespace fs = std::filesystem;
const fs::path kTiny = fs::path(FH1_SOURCE_DIR) / "models/falcon-h1-tiny";

std::vector<float> all_logits(const Model& m, std::span<const int32_t> ids) {
  SequenceState s = m.new_state();
  return m.forward(s, ids, true);
}

// On the random-weight fixtures (whose logits are far too chaotic to bound a quantization error)
// the quantized model must compute exactly what its dequantized weights define: prefill reads the
// blocks exactly; decode differs only by the int8 rounding of activations.
TEST(QuantizedModel, FixturesComputeTheirDequantizedWeights) {
  test::Backend backend;
  for (const std::string& name : test::fixture_names()) {
    const test::Fixture f = test::load_fixture(name);
    for (DType type : {DType::Q8_0, DType::Q4_0, DType::Q4_K}) {
      test::TempDir out;
      const QuantizeReport r = quantize_model(f.dir, out.path, type, backend.pool);
      int quantized = 0;
      for (const auto& t : r.tensors) quantized += t.to != t.from;
      EXPECT_GT(quantized, 0) << name;
      EXPECT_LT(r.bytes_out, r.bytes_in) << name;
      EXPECT_TRUE(fs::exists(out.path / "config.json"));
      const Model q = Model::load(out.path, *backend.kernels);
      EXPECT_EQ(q.weight_bytes(), r.bytes_out);
      const Model dq = test::dequantized_copy(q, *backend.kernels, DType::F32);
      const std::vector<float> got = all_logits(q, f.prompt_ids), want = all_logits(dq, f.prompt_ids);
      EXPECT_LE(test::relative_max_diff(got, want), 1e-4) << name << " " << dtype_name(type);

      SequenceState s = q.new_state();
      std::vector<float> stepwise;
      for (int32_t id : f.prompt_ids) {
        const std::vector<float> l = q.forward(s, std::span<const int32_t>(&id, 1));
        stepwise.insert(stepwise.end(), l.begin(), l.end());
      }
      EXPECT_LE(test::relative_max_diff(stepwise, want), 0.5) << name << " " << dtype_name(type) << " token by token";
    }
  }
}

TEST(QuantizedModel, TinyModelPerplexityPerType) {
  test::Backend backend;
  const nlohmann::json ids_json = read_json_file(fs::path(FH1_FIXTURES_DIR) / "perplexity/ids.json");
  const std::vector<int32_t> ids = ids_json["ids"].get<std::vector<int32_t>>();
  const double base = perplexity(Model::load(kTiny, *backend.kernels), ids, 8192).perplexity;
  for (auto [type, bound] : {std::pair{DType::Q8_0, 0.005}, {DType::Q4_0, 0.06}, {DType::Q4_K, 0.06}}) {
    test::TempDir out;
    quantize_model(kTiny, out.path, type, backend.pool);
    const Model q = Model::load(out.path, *backend.kernels);
    const double ppl = perplexity(q, ids, 8192).perplexity;
    EXPECT_LE(std::abs(ppl / base - 1.0), bound) << dtype_name(type) << ": " << ppl << " vs " << base;
    EXPECT_NE(ppl, base) << dtype_name(type);
    // Decode-sized chunks (the int8 kernels) on the first 200 tokens, against the prefill path.
    const std::span<const int32_t> head(ids.data(), 200);
    const double by_prefill = perplexity(q, head, 8192).perplexity, by_decode = perplexity(q, head, 8192, 3).perplexity;
    EXPECT_LE(std::abs(by_decode / by_prefill - 1.0), bound) << dtype_name(type) << ": " << by_decode << " vs " << by_prefill;
    EXPECT_NE(by_decode, by_prefill);
  }
}

TEST(QuantizedModel, QuantizedFileIsValidSafetensorsWithMetadata) {
  test::Backend backend;
  test::TempDir out;
  quantize_model(kTiny, out.path, DType::Q4_K, backend.pool);
  const SafetensorsFile f(out.path / "model.safetensors");
  const TensorView* w = f.find("model.layers.0.feed_forward.down_proj.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::Q4_K);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{256, 1024}));
  EXPECT_EQ(w->nbytes, static_cast<size_t>(256 * 1024 / 256 * 144));
  EXPECT_EQ(f.find("lm_head.weight")->dtype, DType::Q8_0);  // the output projection stays 8-bit
  EXPECT_EQ(f.find("model.final_layernorm.weight")->dtype, DType::BF16);
  EXPECT_TRUE(fs::exists(out.path / "tokenizer.json"));
}

TEST(QuantizedModel, BadRequestsAreClearErrors) {
  test::Backend backend;
  const auto expect_error = [](auto fn, const char* fragment) {
    try {
      fn();
      ADD_FAILURE() << "no error, expected: " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  test::TempDir out;
  expect_error([&] { quantize_model(kTiny, kTiny, DType::Q8_0, backend.pool); }, "must differ");
  expect_error([&] { quantize_model(out.path / "missing", out.path / "q", DType::Q8_0, backend.pool); },
               "not a directory");
  expect_error([&] { quantize_model(kTiny, out.path / "q", DType::BF16, backend.pool); }, "cannot quantize");
  quantize_model(kTiny, out.path / "q", DType::Q8_0, backend.pool);
  expect_error([&] { quantize_model(out.path / "q", out.path / "qq", DType::Q4_0, backend.pool); }, "already");

  // A NaN in a matrix is refused, and no partial file is left behind.
  const fs::path nan_dir = out.path / "nan";
  fs::create_directories(nan_dir);
  for (const auto& e : fs::directory_iterator(kTiny)) fs::copy_file(e.path(), nan_dir / e.path().filename());
  // Patch one bf16 value of that tensor in the file to NaN (0x7fc0).
  {
    std::string bytes;
    {
      std::ifstream in(nan_dir / "model.safetensors", std::ios::binary);
      bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    uint64_t header_len;
    std::memcpy(&header_len, bytes.data(), 8);
    const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, header_len));
    const uint64_t begin = header["model.layers.1.mamba.in_proj.weight"]["data_offsets"][0];
    const uint16_t nan = 0x7fc0;
    std::memcpy(bytes.data() + 8 + header_len + begin + 2 * 77, &nan, 2);
    std::ofstream(nan_dir / "model.safetensors", std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
  }
  expect_error([&] { quantize_model(nan_dir, out.path / "qn", DType::Q4_K, backend.pool); }, "non-finite");
  EXPECT_FALSE(fs::exists(out.path / "qn" / "model.safetensors.partial"));
  EXPECT_FALSE(fs::exists(out.path / "qn" / "model.safetensors"));
}

}  // namespace
}  // namespace fh1
