// safetensors files (single or sharded through model.safetensors.index.json), memory-mapped.
// Every header is validated before any tensor is handed out: offsets inside the file, no two
// tensors overlapping, byte counts matching dtype x shape. Matrices quantized by `falcon-h1
// quantize` are U8 in the file and come out with their block type (Q8_0, ...) and logical shape.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "io/mapped_file.h"
#include "util/dtype.h"

namespace fh1 {

struct TensorView {
  std::string name;
  DType dtype = DType::UNKNOWN;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapped file
  size_t nbytes = 0;
  const std::filesystem::path* file = nullptr;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  std::string shape_string() const;
};

// Formats a shape as [a, b, c].
std::string shape_to_string(const std::vector<int64_t>& shape);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);  // maps and validates; throws fh1::Error
  const TensorView* find(const std::string& name) const;
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::filesystem::path& path() const { return map_.path(); }

  // Largest header accepted: real headers are well under a few MB even for 100K-tensor files.
  static constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

 private:
  void apply_quantization_metadata(const nlohmann::json& header, const std::string& where);

  MappedFile map_;
  std::map<std::string, TensorView> tensors_;
};

// A tensor held in memory rather than in a mapped file (see TensorStore::from_memory).
struct OwnedTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // numel * dtype_size(dtype) bytes (rows x row bytes if quantized)
};

// All tensors of a model directory: model.safetensors, or the shards listed by
// model.safetensors.index.json.
class TensorStore {
 public:
  // A store over tensors in memory, which it keeps (e.g. random weights for benchmarks).
  // Throws fh1::Error if a byte count disagrees with dtype x shape or a name repeats.
  static TensorStore from_memory(std::vector<OwnedTensor> tensors);
  static TensorStore open_dir(const std::filesystem::path& dir);
  static TensorStore open_files(const std::vector<std::filesystem::path>& files);

  const TensorView* find(const std::string& name) const;
  const TensorView& get(const std::string& name) const;  // throws fh1::Error if missing
  const std::map<std::string, const TensorView*>& all() const { return index_; }
  size_t total_bytes() const;

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::shared_ptr<const std::vector<OwnedTensor>> owned_;                // from_memory's bytes
  std::shared_ptr<const std::map<std::string, TensorView>> owned_views_;  // and their views
  std::map<std::string, const TensorView*> index_;
};

}  // namespace fh1
