// The 8-bit KV cache row (quant/kv_q8.h) against a float64 account of what it must hold.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "quant/kv_q8.h"

namespace fh1 {
namespace {

TEST(KvQ8, BlockAndRowSizes) {
  EXPECT_EQ(kv_q8_block(256), 32);
  EXPECT_EQ(kv_q8_block(48), 16);
  EXPECT_EQ(kv_q8_block(36), 4);
  EXPECT_EQ(kv_q8_block(7), 1);
  EXPECT_EQ(kv_q8_row_bytes(256), 256 + 32);  // 8 scales
  EXPECT_EQ(kv_q8_row_bytes(48), 64);         // 48 + 3 scales = 60, padded
  EXPECT_EQ(kv_q8_row_bytes(7), 48);          // 7 (+ 1 to 8) + 7 scales = 36, padded
  EXPECT_EQ(kv_q8_row_bytes(37), 192);        // 37 (+ 3) + 37 scales = 188, padded
  EXPECT_EQ(kv_q8_scales_at(37), 40);
  for (int64_t w = 1; w < 600; ++w) {
    EXPECT_EQ(kv_q8_row_bytes(w) % 16, 0) << w;
    EXPECT_EQ(kv_q8_scales_at(w) % 4, 0) << w;
    EXPECT_GE(kv_q8_scales_at(w), w) << w;
    EXPECT_GE(kv_q8_row_bytes(w), kv_q8_scales_at(w) + 4 * (w / kv_q8_block(w))) << w;
  }
}

// Every value within half a step of its block's scale, the block's largest exactly at +-127
// steps, zeros and all-zero blocks kept exactly, and the padding zero.
TEST(KvQ8, QuantizedRowsStayWithinHalfAStep) {
  std::mt19937 rng(5);
  for (int64_t width : {256, 48, 24, 7, 128 * 6}) {
    std::vector<float> x(static_cast<size_t>(width));
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (size_t i = 0; i < x.size(); ++i) x[i] = nd(rng) * (i % 3 == 0 ? 1e-3f : 4.0f);
    const int64_t B = kv_q8_block(width);
    for (int64_t i = 0; i < std::min<int64_t>(B, width); ++i) x[static_cast<size_t>(i)] = 0.0f;  // an all-zero block
    std::vector<uint8_t> row(static_cast<size_t>(kv_q8_row_bytes(width)), 0xAB);
    kv_q8_quantize_row(x.data(), width, row.data());
    std::vector<float> back(x.size());
    kv_q8_dequantize(row.data(), width, 0, width, back.data());
    for (int64_t b = 0; b < width; b += B) {
      double m = 0;
      for (int64_t i = b; i < b + B; ++i) m = std::max(m, std::fabs(double(x[static_cast<size_t>(i)])));
      const double step = m / 127.0;
      for (int64_t i = b; i < b + B; ++i) {
        const double err = std::fabs(double(back[static_cast<size_t>(i)]) - double(x[static_cast<size_t>(i)]));
        EXPECT_LE(err, step * 0.5000001 + 1e-30) << "width " << width << " value " << i;
        if (x[static_cast<size_t>(i)] == 0.0f) {
          EXPECT_EQ(back[static_cast<size_t>(i)], 0.0f);
        }
        if (std::fabs(double(x[static_cast<size_t>(i)])) == m && m > 0) {
          EXPECT_EQ(std::abs(int(reinterpret_cast<int8_t*>(row.data())[i])), 127);
        }
      }
    }
    for (size_t i = static_cast<size_t>(width); i < static_cast<size_t>(kv_q8_scales_at(width)); ++i)
      EXPECT_EQ(row[i], 0) << i;
    for (size_t i = static_cast<size_t>(kv_q8_scales_at(width) + 4 * (width / B)); i < row.size(); ++i)
      EXPECT_EQ(row[i], 0) << i;
    // A slice (one head's values) reads as the same values.
    if (width >= 10) {
      std::vector<float> part(5);
      kv_q8_dequantize(row.data(), width, 5, 5, part.data());
      for (int i = 0; i < 5; ++i) EXPECT_EQ(part[static_cast<size_t>(i)], back[static_cast<size_t>(5 + i)]);
    }
  }
}

}  // namespace
}  // namespace fh1
