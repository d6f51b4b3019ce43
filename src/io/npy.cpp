#include "io/npy.h"

#include <cstring>
#include <fstream>
#include <regex>
#include <string>

#include "io/json_file.h"
#include "util/error.h"

namespace fh1 {

void write_npy_f32(const std::filesystem::path& path, const std::vector<int64_t>& shape, const float* data) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dict += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) dict += ",";
    if (i + 1 < shape.size()) dict += " ";
    n *= shape[i];
  }
  dict += "), }";
  // Header (magic 6 + version 2 + length 2 + dict + '\n') padded to a multiple of 64 bytes.
  const size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error(path.string() + ": cannot open for writing");
  const char magic[] = "\x93NUMPY\x01\x00";
  out.write(magic, 8);
  const uint16_t len = static_cast<uint16_t>(dict.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out.write(dict.data(), static_cast<std::streamsize>(dict.size()));
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * sizeof(float)));
  if (!out) throw Error(path.string() + ": write failed");
}

NpyArray read_npy(const std::filesystem::path& path) {
  const std::string bytes = read_text_file(path);
  const std::string where = path.string();
  if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0) throw Error(where + ": not a .npy file");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
    offset = 10;
  } else {
    if (bytes.size() < 12) throw Error(where + ": truncated .npy header");
    uint32_t l;
    std::memcpy(&l, bytes.data() + 8, 4);
    header_len = l;
    offset = 12;
  }
  if (offset + header_len > bytes.size()) throw Error(where + ": truncated .npy header");
  const std::string header = bytes.substr(offset, header_len);
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr':\\s*'([<|>]?)([a-z])(\\d+)'")))
    throw Error(where + ": .npy header without descr");
  const char kind = m[2].str()[0];
  const int width = std::stoi(m[3].str());
  if (m[1].str() == ">") throw Error(where + ": big-endian .npy not supported");
  if (header.find("'fortran_order': True") != std::string::npos) throw Error(where + ": Fortran-order .npy not supported");
  if (!std::regex_search(header, m, std::regex("'shape':\\s*\\(([^)]*)\\)"))) throw Error(where + ": .npy header without shape");
  NpyArray arr;
  int64_t n = 1;
  const std::string dims = m[1].str();
  const std::regex number("\\d+");
  for (std::sregex_iterator it(dims.begin(), dims.end(), number), end; it != end; ++it) {
    arr.shape.push_back(std::stoll(it->str()));
    n *= arr.shape.back();
  }
  const size_t data_off = offset + header_len;
  if (data_off + static_cast<size_t>(n) * width > bytes.size()) throw Error(where + ": truncated .npy data");
  arr.data.resize(static_cast<size_t>(n));
  const char* p = bytes.data() + data_off;
  for (int64_t i = 0; i < n; ++i) {
    const char* e = p + i * width;
    if (kind == 'f' && width == 4) { float v; std::memcpy(&v, e, 4); arr.data[i] = v; }
    else if (kind == 'f' && width == 8) { double v; std::memcpy(&v, e, 8); arr.data[i] = static_cast<float>(v); }
    else if (kind == 'i' && width == 4) { int32_t v; std::memcpy(&v, e, 4); arr.data[i] = static_cast<float>(v); }
    else if (kind == 'i' && width == 8) { int64_t v; std::memcpy(&v, e, 8); arr.data[i] = static_cast<float>(v); }
    else throw Error(where + ": unsupported .npy dtype " + std::string(1, kind) + std::to_string(width));
  }
  return arr;
}

}  // namespace fh1
