// One error type for every user-facing failure: bad files, bad configs, bad requests.
// The message says what was expected and what was found, and where (file, tensor, field).
#pragma once

#include <stdexcept>
#include <string>

namespace fh1 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// "<where>: expected <expected>, found <found>"
inline Error mismatch(const std::string& where, const std::string& expected,
                      const std::string& found) {
  return Error(where + ": expected " + expected + ", found " + found);
}

}  // namespace fh1
