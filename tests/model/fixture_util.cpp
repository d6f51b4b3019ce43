#include "model/fixture_util.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "io/json_file.h"
#include "io/npy.h"
#include "quant/blocks.h"
#include "util/error.h"
#include "util/half.h"

namespace fh1::test {

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(std::string(FH1_FIXTURES_DIR) + "/models"))
    if (e.is_directory() && std::filesystem::exists(e.path() / "reference.json")) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

Fixture load_fixture(const std::string& name) {
  Fixture f;
  f.name = name;
  f.dir = std::string(FH1_FIXTURES_DIR) + "/models/" + name;
  const nlohmann::json ref = read_json_file(f.dir + "/reference.json");
  f.prompt_ids = ref.at("prompt_ids").get<std::vector<int32_t>>();
  f.greedy_prompt_ids = ref.at("greedy_prompt_ids").get<std::vector<int32_t>>();
  f.greedy_ids = ref.at("greedy_ids").get<std::vector<int32_t>>();
  f.greedy_top2_margin = ref.at("greedy_top2_margin").get<std::vector<double>>();
  f.logits = read_npy(f.dir + "/logits.npy").data;
  return f;
}

double relative_max_diff(const std::vector<float>& a, const std::vector<float>& ref) {
  if (a.size() != ref.size()) return INFINITY;
  double mx = 0.0, ss = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    mx = std::max(mx, std::abs(static_cast<double>(a[i]) - ref[i]));
    ss += static_cast<double>(ref[i]) * ref[i];
  }
  return mx / std::sqrt(ss / static_cast<double>(ref.size()));
}

Model dequantized_copy(const Model& quantized, Kernels& kernels, DType to) {
  if (to != DType::F32 && to != DType::BF16) throw Error("dequantized_copy: F32 or BF16");
  std::vector<OwnedTensor> tensors;
  for (const auto& [name, t] : quantized.tensors().all()) {
    OwnedTensor o;
    o.name = name;
    o.shape = t->shape;
    o.dtype = is_quantized_dtype(t->dtype) ? to : t->dtype;
    if (!is_quantized_dtype(t->dtype)) {
      o.bytes.assign(t->data, t->data + t->nbytes);
      tensors.push_back(std::move(o));
      continue;
    }
    const int64_t rows = t->shape[0], cols = t->shape[1], rb = dtype_row_bytes(t->dtype, cols);
    o.bytes.resize(static_cast<size_t>(rows * cols) * dtype_size(to));
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      quant::dequantize_row(t->dtype, t->data + r * rb, cols, row.data());
      for (int64_t c = 0; c < cols; ++c) {
        uint8_t* dst = o.bytes.data() + (r * cols + c) * static_cast<int64_t>(dtype_size(to));
        if (to == DType::F32) {
          std::memcpy(dst, &row[static_cast<size_t>(c)], 4);
        } else {
          const uint16_t h = f32_to_bf16(row[static_cast<size_t>(c)]);
          std::memcpy(dst, &h, 2);
        }
      }
    }
    tensors.push_back(std::move(o));
  }
  return Model::from_store(quantized.config(), TensorStore::from_memory(std::move(tensors)), kernels);
}

}  // namespace fh1::test
