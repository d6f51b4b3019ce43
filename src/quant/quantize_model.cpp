#include "quant/quantize_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "model/config.h"
#include "quant/blocks.h"
#include "util/error.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace fh1 {
namespace {

namespace fs = std::filesystem;

float element(const TensorView& t, int64_t i) {
  uint16_t h;
  float f;
  switch (t.dtype) {
    case DType::F32: std::memcpy(&f, t.data + 4 * i, 4); return f;
    case DType::BF16: std::memcpy(&h, t.data + 2 * i, 2); return bf16_to_f32(h);
    case DType::F16: std::memcpy(&h, t.data + 2 * i, 2); return f16_to_f32(h);
    default: throw Error("tensor '" + t.name + "': cannot read dtype " + dtype_name(t.dtype));
  }
}

// What a tensor becomes: the asked type where its rows are whole blocks, else a fallback.
QuantizedTensorInfo plan(const TensorView& t, DType type, const std::string& output_name) {
  QuantizedTensorInfo q;
  q.name = t.name;
  q.from = q.to = t.dtype;
  q.shape = t.shape;
  q.bytes_in = t.nbytes;
  q.bytes_out = t.nbytes;
  if (is_quantized_dtype(t.dtype))
    throw Error("tensor '" + t.name + "' is already " + dtype_name(t.dtype) + ": quantize from a float checkpoint");
  if (t.shape.size() != 2 || !is_float_dtype(t.dtype)) return q;
  DType want = type;
  if (t.name == output_name && type != DType::Q8_0) {
    want = DType::Q8_0;
    q.note = "output projection kept at Q8_0";
  }
  const int64_t cols = t.shape[1];
  if (want == DType::Q4_K && cols % 256 != 0) {
    want = DType::Q4_0;
    q.note = "rows of " + std::to_string(cols) + " are not whole Q4_K blocks of 256: Q4_0";
  }
  if (cols % dtype_block_elems(want) != 0) {
    q.note = "rows of " + std::to_string(cols) + " are not whole blocks of 32: kept";
    return q;
  }
  q.to = want;
  q.bytes_out = static_cast<uint64_t>(t.shape[0] * dtype_row_bytes(want, cols));
  return q;
}

void copy_over(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
  if (ec) throw Error("cannot copy " + from.string() + " to " + to.string() + ": " + ec.message());
}

}  // namespace

QuantizeReport quantize_model(const fs::path& in_dir, const fs::path& out_dir, DType type, ThreadPool& pool,
                              const std::function<void(uint64_t, uint64_t, const std::string&)>& progress) {
  if (!is_quantized_dtype(type)) throw Error(std::string("cannot quantize to ") + dtype_name(type));
  if (!fs::is_directory(in_dir)) throw Error(in_dir.string() + ": not a directory");
  std::error_code ec;
  if (fs::exists(out_dir) && fs::equivalent(in_dir, out_dir, ec))
    throw Error("the output directory must differ from the input directory");
  const ModelConfig config = ModelConfig::from_dir(in_dir);  // refuse what the engine cannot load
  const TensorStore store = TensorStore::open_dir(in_dir);
  const std::string output_name = config.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";

  QuantizeReport report;
  for (const auto& [name, t] : store.all()) report.tensors.push_back(plan(*t, type, output_name));

  // The header, with offsets in name order (the order the data follows).
  nlohmann::json header = nlohmann::json::object();
  nlohmann::json meta = {{"format", "pt"}, {"falcon_h1.quantization", dtype_name(type)}};
  uint64_t offset = 0;
  for (const auto& q : report.tensors) {
    nlohmann::json e;
    if (q.to != q.from) {
      e["dtype"] = "U8";
      e["shape"] = {q.shape[0], dtype_row_bytes(q.to, q.shape[1])};
      meta["falcon_h1.quant." + q.name] = dtype_name(q.to);
    } else {
      e["dtype"] = dtype_name(q.from);
      e["shape"] = q.shape;
    }
    e["data_offsets"] = {offset, offset + q.bytes_out};
    header[q.name] = e;
    offset += q.bytes_out;
    report.bytes_in += q.bytes_in;
    report.bytes_out += q.bytes_out;
  }
  header["__metadata__"] = meta;
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // data starts 8-byte aligned

  fs::create_directories(out_dir, ec);
  if (ec) throw Error("cannot create " + out_dir.string() + ": " + ec.message());
  const fs::path final_path = out_dir / "model.safetensors", tmp_path = out_dir / "model.safetensors.partial";
  std::ofstream out(tmp_path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error("cannot write " + tmp_path.string());
  const uint64_t header_len = header_text.size();
  out.write(reinterpret_cast<const char*>(&header_len), 8);
  out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));

  uint64_t done = 0;
  std::vector<uint8_t> buf;
  for (const auto& q : report.tensors) {
    const TensorView& t = store.get(q.name);
    if (q.to == q.from) {
      out.write(reinterpret_cast<const char*>(t.data), static_cast<std::streamsize>(t.nbytes));
    } else {
      const int64_t rows = q.shape[0], cols = q.shape[1], rb = dtype_row_bytes(q.to, cols);
      buf.resize(static_cast<size_t>(rows * rb));
      std::mutex error_mutex;
      std::string error;
      pool.parallel_for(static_cast<size_t>(rows), [&](size_t r0, size_t r1) {
        std::vector<float> row(static_cast<size_t>(cols));
        for (size_t r = r0; r < r1; ++r) {
          for (int64_t c = 0; c < cols; ++c) {
            row[static_cast<size_t>(c)] = element(t, static_cast<int64_t>(r) * cols + c);
            if (!std::isfinite(row[static_cast<size_t>(c)])) {
              const std::lock_guard<std::mutex> lock(error_mutex);
              error = "tensor '" + q.name + "' has a non-finite value at row " + std::to_string(r) + ", column " +
                      std::to_string(c) + ": refusing to quantize it";
              return;
            }
          }
          quant::quantize_row(q.to, row.data(), cols, buf.data() + static_cast<int64_t>(r) * rb);
        }
      });
      if (!error.empty()) {
        out.close();
        fs::remove(tmp_path, ec);
        throw Error(error);
      }
      out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
    }
    if (!out) throw Error("writing " + tmp_path.string() + " failed (disk full?)");
    done += q.bytes_in;
    if (progress) progress(done, report.bytes_in, q.name);
  }
  out.close();
  if (!out) throw Error("writing " + tmp_path.string() + " failed (disk full?)");
  fs::rename(tmp_path, final_path, ec);
  if (ec) throw Error("cannot rename " + tmp_path.string() + ": " + ec.message());
  fs::remove(out_dir / "model.safetensors.index.json", ec);  // a stale index would win over the file

  // Everything else the directory holds (config, tokenizer, chat template, ...), weights excepted.
  for (const auto& entry : fs::directory_iterator(in_dir)) {
    if (!entry.is_regular_file()) continue;
    const std::string fname = entry.path().filename().string();
    if (fname.ends_with(".safetensors") || fname == "model.safetensors.index.json" || fname.ends_with(".bin") ||
        fname.ends_with(".pt") || fname.ends_with(".gguf"))
      continue;
    copy_over(entry.path(), out_dir / fname);
  }
  return report;
}

}  // namespace fh1
