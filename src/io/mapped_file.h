// A read-only memory map of a whole file. Weights are used straight from the map when their
// stored dtype is what a kernel reads, so a model costs no copy to load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace fh1 {

class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);  // throws fh1::Error
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace fh1
