// Writes a block-quantized copy of a Hugging Face Falcon-H1 directory (falcon-h1 quantize): the
// weight matrices in Q8_0, Q4_0 or Q4_K (GGUF's block layouts), everything else as it was, in one
// model.safetensors that the engine maps without copying. Quantized matrices are stored as U8
// [rows, row_bytes] and named in the header's metadata ("falcon_h1.quant.<tensor>": "Q4_K"), so
// the file stays a valid safetensors file for other readers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "util/dtype.h"

namespace fh1 {

class ThreadPool;

struct QuantizedTensorInfo {
  std::string name;
  DType from = DType::UNKNOWN, to = DType::UNKNOWN;  // to == from: copied as is
  std::vector<int64_t> shape;
  uint64_t bytes_in = 0, bytes_out = 0;
  std::string note;  // why a matrix kept another type than asked, if it did
};

struct QuantizeReport {
  std::vector<QuantizedTensorInfo> tensors;
  uint64_t bytes_in = 0, bytes_out = 0;
};

// Quantizes in_dir into out_dir (created; its model.safetensors and copied files overwritten;
// must differ from in_dir). `type` is Q8_0, Q4_0 or Q4_K. Rules: every 2-D float matrix is
// quantized when its rows split into whole blocks (Q4_K falls back to Q4_0 for rows that are not
// a multiple of 256 values); in the 4-bit types the output projection (lm_head, or the embedding
// when tied) is kept at Q8_0, as it is the most sensitive matrix. Vectors stay as they are.
// progress(done_bytes, total_bytes, tensor name) is called as tensors complete. Throws fh1::Error.
QuantizeReport quantize_model(const std::filesystem::path& in_dir, const std::filesystem::path& out_dir, DType type,
                              ThreadPool& pool,
                              const std::function<void(uint64_t, uint64_t, const std::string&)>& progress = {});

}  // namespace fh1
