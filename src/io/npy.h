// NumPy .npy files (version 1.0, little-endian, C order): float32 and int64/int32 arrays.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

namespace fh1 {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // converted to float32 whatever the stored type (f4, f8, i4, i8)
};

void write_npy_f32(const std::filesystem::path& path, const std::vector<int64_t>& shape, const float* data);
NpyArray read_npy(const std::filesystem::path& path);  // throws fh1::Error

}  // namespace fh1
