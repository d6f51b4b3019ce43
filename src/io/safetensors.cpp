#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "io/json_file.h"
#include "util/error.h"

namespace fh1 {

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string TensorView::shape_string() const { return shape_to_string(shape); }

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : map_(path) {
  const std::string where = path.string();
  if (map_.size() < 8)
    throw Error(where + ": truncated: " + std::to_string(map_.size()) +
                " bytes, a safetensors file starts with an 8-byte header length");
  uint64_t header_len = 0;
  std::memcpy(&header_len, map_.data(), 8);  // little-endian on every platform we build for
  if (header_len > kMaxHeaderBytes)
    throw Error(where + ": header length " + std::to_string(header_len) +
                " bytes is absurd (limit " + std::to_string(kMaxHeaderBytes) + "): not a safetensors file?");
  if (header_len > map_.size() - 8)
    throw Error(where + ": truncated: header says " + std::to_string(header_len) +
                " bytes but only " + std::to_string(map_.size() - 8) + " follow");
  const std::string header_text(reinterpret_cast<const char*>(map_.data() + 8), header_len);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(where + ": header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) throw Error(where + ": header is not a JSON object");

  const uint8_t* data_start = map_.data() + 8 + header_len;
  const uint64_t data_size = map_.size() - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::vector<std::string> range_names;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string tw = where + ": tensor '" + it.key() + "'";
    const auto& e = it.value();
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      throw Error(tw + ": header entry needs dtype, shape and data_offsets");
    if (!e["dtype"].is_string()) throw mismatch(tw + " dtype", "a string", e["dtype"].dump());
    TensorView t;
    t.name = it.key();
    t.dtype = dtype_from_name(e["dtype"].get<std::string>());
    if (t.dtype == DType::UNKNOWN) throw Error(tw + ": unknown dtype " + e["dtype"].dump());
    if (!e["shape"].is_array()) throw mismatch(tw + " shape", "an array", e["shape"].dump());
    uint64_t numel = 1;
    for (const auto& d : e["shape"]) {
      if (!d.is_number_unsigned()) throw mismatch(tw + " shape", "non-negative integers", e["shape"].dump());
      const uint64_t v = d.get<uint64_t>();
      if (v != 0 && numel > (uint64_t{1} << 62) / v) throw Error(tw + ": shape overflows");
      numel *= v;
      t.shape.push_back(static_cast<int64_t>(v));
    }
    const auto& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw mismatch(tw + " data_offsets", "[begin, end]", off.dump());
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end) throw Error(tw + ": data_offsets " + off.dump() + " end before begin");
    if (end > data_size)
      throw Error(tw + ": data_offsets " + off.dump() + " run past the end of the file (data is " +
                  std::to_string(data_size) + " bytes): truncated file?");
    const uint64_t expected = numel * dtype_size(t.dtype);
    if (end - begin != expected)
      throw mismatch(tw + " byte count", std::to_string(expected) + " bytes for " +
                                             dtype_name(t.dtype) + " " + t.shape_string(),
                     std::to_string(end - begin));
    t.data = data_start + begin;
    t.nbytes = end - begin;
    t.file = &map_.path();
    ranges.emplace_back(begin, end);
    range_names.push_back(t.name);
    tensors_.emplace(t.name, std::move(t));
  }
  apply_quantization_metadata(header, where);
  // No two tensors may share bytes.
  std::vector<size_t> order(ranges.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& prev = ranges[order[i - 1]];
    const auto& cur = ranges[order[i]];
    if (cur.first < prev.second && cur.first != cur.second && prev.first != prev.second)
      throw Error(where + ": tensors '" + range_names[order[i - 1]] + "' and '" + range_names[order[i]] +
                  "' overlap in the file");
  }
}

// Our quantized checkpoints (falcon-h1 quantize) store each quantized matrix as U8 [rows,
// row_bytes] holding GGUF's blocks, and name its type in the header's metadata under
// "falcon_h1.quant.<tensor name>"; the view then has that type and the logical shape [rows, cols].
void SafetensorsFile::apply_quantization_metadata(const nlohmann::json& header, const std::string& where) {
  if (!header.contains("__metadata__")) return;
  const auto& meta = header["__metadata__"];
  if (!meta.is_object()) throw mismatch(where + ": __metadata__", "an object of strings", meta.dump());
  const std::string prefix = "falcon_h1.quant.";
  for (auto it = meta.begin(); it != meta.end(); ++it) {
    if (it.key().rfind(prefix, 0) != 0) continue;
    const std::string name = it.key().substr(prefix.size());
    const std::string tw = where + ": quantized tensor '" + name + "'";
    if (!it.value().is_string()) throw mismatch(tw + " type", "a string", it.value().dump());
    const DType type = quantized_dtype_from_name(it.value().get<std::string>());
    if (type == DType::UNKNOWN)
      throw mismatch(tw + " type", "Q8_0, Q4_0 or Q4_K", it.value().get<std::string>());
    auto t = tensors_.find(name);
    if (t == tensors_.end()) throw Error(tw + ": named in __metadata__ but not in the file");
    TensorView& v = t->second;
    if (v.dtype != DType::U8 || v.shape.size() != 2)
      throw mismatch(tw + " storage", "U8 [rows, row_bytes]", std::string(dtype_name(v.dtype)) + " " + v.shape_string());
    const int64_t bb = dtype_block_bytes(type);
    if (v.shape[1] % bb != 0)
      throw Error(tw + ": rows of " + std::to_string(v.shape[1]) + " bytes are not whole " + dtype_name(type) +
                  " blocks of " + std::to_string(bb) + " bytes");
    v.dtype = type;
    v.shape[1] = v.shape[1] / bb * dtype_block_elems(type);
  }
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

TensorStore TensorStore::open_files(const std::vector<std::filesystem::path>& files) {
  TensorStore store;
  for (const auto& f : files) {
    auto file = std::make_shared<SafetensorsFile>(f);
    for (const auto& [name, view] : file->tensors()) {
      if (!store.index_.emplace(name, &view).second)
        throw Error(f.string() + ": tensor '" + name + "' also appears in another shard");
    }
    store.files_.push_back(std::move(file));
  }
  return store;
}

TensorStore TensorStore::open_dir(const std::filesystem::path& dir) {
  const auto single = dir / "model.safetensors";
  const auto index_path = dir / "model.safetensors.index.json";
  if (std::filesystem::exists(index_path)) {
    const nlohmann::json index = read_json_file(index_path);
    if (!index.contains("weight_map") || !index["weight_map"].is_object())
      throw Error(index_path.string() + ": missing object 'weight_map'");
    std::vector<std::filesystem::path> shards;
    std::set<std::string> seen;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        throw mismatch(index_path.string() + ": weight_map['" + it.key() + "']", "a file name", it.value().dump());
      const std::string file = it.value().get<std::string>();
      if (file.empty() || file == "." || file.find('/') != std::string::npos || file.find("..") != std::string::npos)
        throw Error(index_path.string() + ": shard name '" + file + "' must be a plain file name");
      if (seen.insert(file).second) shards.push_back(dir / file);
    }
    for (const auto& s : shards)
      if (!std::filesystem::exists(s))
        throw Error(index_path.string() + " lists shard " + s.filename().string() + ", which is missing");
    TensorStore store = open_files(shards);
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      const TensorView* t = store.find(it.key());
      if (t == nullptr || t->file->filename() != it.value().get<std::string>())
        throw Error(index_path.string() + ": tensor '" + it.key() + "' is not in shard " +
                    it.value().get<std::string>());
    }
    return store;
  }
  if (std::filesystem::exists(single)) return open_files({single});
  throw Error(dir.string() + ": no model.safetensors or model.safetensors.index.json");
}

TensorStore TensorStore::from_memory(std::vector<OwnedTensor> tensors) {
  TensorStore store;
  auto owned = std::make_shared<const std::vector<OwnedTensor>>(std::move(tensors));
  auto views = std::make_shared<std::map<std::string, TensorView>>();
  for (const OwnedTensor& o : *owned) {
    TensorView t;
    t.name = o.name;
    t.dtype = o.dtype;
    t.shape = o.shape;
    t.data = o.bytes.data();
    t.nbytes = o.bytes.size();
    size_t expected = static_cast<size_t>(t.numel()) * dtype_size(t.dtype);
    if (is_quantized_dtype(t.dtype)) {
      if (t.shape.size() != 2 || t.shape[1] % dtype_block_elems(t.dtype) != 0)
        throw Error("in-memory tensor '" + o.name + "': " + dtype_name(t.dtype) + " needs 2 dimensions, the last a multiple of " +
                    std::to_string(dtype_block_elems(t.dtype)));
      expected = static_cast<size_t>(t.shape[0] * dtype_row_bytes(t.dtype, t.shape[1]));
    }
    if (t.nbytes != expected)
      throw mismatch("in-memory tensor '" + o.name + "' byte count", std::to_string(expected), std::to_string(t.nbytes));
    if (!views->emplace(o.name, std::move(t)).second) throw Error("in-memory tensor '" + o.name + "' appears twice");
  }
  for (const auto& [name, view] : *views) store.index_.emplace(name, &view);
  store.owned_ = std::move(owned);
  store.owned_views_ = std::move(views);
  return store;
}

const TensorView* TensorStore::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const TensorView& TensorStore::get(const std::string& name) const {
  const TensorView* t = find(name);
  if (t == nullptr) throw Error("missing tensor '" + name + "' in the checkpoint");
  return *t;
}

size_t TensorStore::total_bytes() const {
  size_t n = 0;
  for (const auto& [name, t] : index_) n += t->nbytes;
  return n;
}

}  // namespace fh1
