// Block formats: our Q8_0 / Q4_0 bytes equal those of GGUF's reference quantizers, our Q4_K
// reading equals GGUF's (fixtures made by tests/python/make_quant_fixtures.py with the gguf
// package), and quantizing loses no more than each format's step allows.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <random>

#include "io/json_file.h"
#include "quant/blocks.h"
#include "util/error.h"
#include "util/half.h"

namespace fh1 {
namespace {

std::vector<uint8_t> read_bytes(const std::string& name) {
  std::ifstream f(std::string(FH1_FIXTURES_DIR) + "/quant/" + name, std::ios::binary);
  EXPECT_TRUE(f.good()) << name;
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::vector<float> read_floats(const std::string& name) {
  const auto b = read_bytes(name);
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);
  return v;
}

struct GgufFixture : ::testing::Test {
  nlohmann::json meta = read_json_file(std::string(FH1_FIXTURES_DIR) + "/quant/meta.json");
  int64_t rows = meta["rows"], cols = meta["cols"];
  std::vector<float> input = read_floats("input.f32");
};

TEST_F(GgufFixture, Q8_0AndQ4_0BytesEqualGguf) {
  ASSERT_EQ(input.size(), static_cast<size_t>(rows * cols));
  for (auto [type, file] : {std::pair{DType::Q8_0, "q8_0.bin"}, {DType::Q4_0, "q4_0.bin"}}) {
    const auto expected = read_bytes(file);
    const int64_t rb = dtype_row_bytes(type, cols);
    ASSERT_EQ(expected.size(), static_cast<size_t>(rows * rb)) << file;
    std::vector<uint8_t> ours(expected.size());
    for (int64_t r = 0; r < rows; ++r) quant::quantize_row(type, input.data() + r * cols, cols, ours.data() + r * rb);
    size_t differing = 0;
    for (size_t i = 0; i < ours.size(); ++i) differing += ours[i] != expected[i];
    EXPECT_EQ(differing, 0u) << file << ": bytes differ from gguf's quantizer";
  }
}

TEST_F(GgufFixture, Q4_KDequantizationEqualsGguf) {
  const auto blocks = read_bytes("q4_k_blocks.bin");
  const auto expected = read_floats("q4_k_dequant.f32");
  const int64_t rb = dtype_row_bytes(DType::Q4_K, cols);
  ASSERT_EQ(blocks.size(), static_cast<size_t>(rows * rb));
  std::vector<float> ours(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    quant::dequantize_row(DType::Q4_K, blocks.data() + r * rb, cols, ours.data());
    for (int64_t c = 0; c < cols; ++c)
      ASSERT_NEAR(ours[c], expected[r * cols + c], 1e-6f * std::max(1.0f, std::fabs(expected[r * cols + c])))
          << "row " << r << " col " << c;
  }
}

// Each value comes back within the format's rounding step: half a step for Q8_0, one for Q4_0
// (plus the scale's fp16 rounding), and for Q4_K a mean error well under a step of plain 4-bit min/max
// quantization (its scales and mins are themselves 6-bit, so single values may miss by more).
TEST(QuantBlocks, RoundTripErrorWithinTheStep) {
  std::mt19937 rng(3);
  // (Scales far under 1e-2 make the fp16 block scale subnormal, which loses relative precision: a
  // property of the format, not tested here.)
  for (float scale : {1e-2f, 1.0f, 300.0f}) {
    std::normal_distribution<float> nd(0.0f, scale);
    std::vector<float> x(1024), back(x.size());
    for (auto& v : x) v = nd(rng);
    x[5] = 0.0f;
    std::fill(x.begin() + 256, x.begin() + 288, 0.0f);  // a block of zeros
    for (DType type : {DType::Q8_0, DType::Q4_0, DType::Q4_K}) {
      std::vector<uint8_t> q(static_cast<size_t>(dtype_row_bytes(type, 1024)));
      quant::quantize_row(type, x.data(), 1024, q.data());
      quant::dequantize_row(type, q.data(), 1024, back.data());
      double mean_err = 0, mean_step = 0;
      for (int b = 0; b < 1024 / 32; ++b) {
        float amax = 0, lo = 0, hi = 0;
        for (int j = 0; j < 32; ++j) {
          amax = std::max(amax, std::fabs(x[32 * b + j]));
          lo = std::min(lo, x[32 * b + j]);
          hi = std::max(hi, x[32 * b + j]);
        }
        const float step = type == DType::Q8_0 ? amax / 127 : type == DType::Q4_0 ? amax / 8 : (hi - lo) / 15;
        for (int j = 0; j < 32; ++j) {
          const float err = std::fabs(back[32 * b + j] - x[32 * b + j]);
          mean_err += err;
          mean_step += step;
          if (type != DType::Q4_K) {
            // Half a step, plus the fp16 rounding of the scale (2^-11 relative) times the largest q;
            // Q4_0's levels -8..7 are lopsided, so a value opposite the largest one can be clamped
            // a whole step away.
            const float qmax = type == DType::Q8_0 ? 127.0f : 8.0f, steps = type == DType::Q8_0 ? 0.5f : 1.0f;
            ASSERT_LE(err, steps * step * (1.0f + 2.0f * qmax / 2048.0f + 1e-3f) + 1e-30f)
                << dtype_name(type) << " scale " << scale << " value " << x[32 * b + j];
          }
          if (amax == 0.0f) {
            ASSERT_EQ(back[32 * b + j], 0.0f) << dtype_name(type);
          }
        }
      }
      if (type == DType::Q4_K) {
        EXPECT_LT(mean_err, 0.35 * mean_step) << "scale " << scale;
      }
    }
  }
}

TEST(QuantBlocks, ActivationsQuantizeToInt8WithScaleAndSum) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> x(96);
  for (auto& v : x) v = nd(rng);
  std::fill(x.begin() + 32, x.begin() + 64, 0.0f);
  std::vector<int8_t> q(96);
  float d[3], ds[3];
  quant::quantize_activations(x.data(), 96, q.data(), d, ds);
  EXPECT_EQ(d[1], 0.0f);
  EXPECT_EQ(ds[1], 0.0f);
  for (int b = 0; b < 3; ++b) {
    int sum = 0, maxq = 0;
    for (int j = 0; j < 32; ++j) {
      sum += q[32 * b + j];
      maxq = std::max(maxq, std::abs(static_cast<int>(q[32 * b + j])));
      EXPECT_LE(std::fabs(q[32 * b + j] * d[b] - x[32 * b + j]), 0.5f * d[b] * 1.0001f + 1e-30f);
    }
    EXPECT_FLOAT_EQ(ds[b], d[b] * static_cast<float>(sum));
    if (d[b] != 0.0f) {
      EXPECT_EQ(maxq, 127);
    }
  }
}

TEST(QuantBlocks, RowsThatAreNotWholeBlocksAreAnError) {
  std::vector<float> x(40);
  std::vector<uint8_t> q(100);
  EXPECT_THROW(quant::quantize_row(DType::Q8_0, x.data(), 40, q.data()), Error);
  EXPECT_THROW(quant::quantize_row(DType::Q4_K, x.data(), 32, q.data()), Error);
  EXPECT_THROW(quant::dequantize_row(DType::BF16, q.data(), 32, x.data()), Error);
}

TEST(Half, F32ToF16RoundsToNearestEvenAndRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
  EXPECT_EQ(f32_to_f16(1.0f + 1.0f / 2048), 0x3c00);          // a tie: to the even neighbour, 1.0
  EXPECT_EQ(f32_to_f16(1.0f + 3.0f / 2048), 0x3c02);          // a tie: to the even neighbour, up
  EXPECT_EQ(f32_to_f16(70000.0f), 0x7c00);                    // overflow: inf
  EXPECT_EQ(f32_to_f16(-1e-9f), 0x8000);                      // underflow: -0
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);        // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -26)), 0x0001);        // 0.75 of it: rounds up
}

}  // namespace
}  // namespace fh1
