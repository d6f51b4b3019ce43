// A compiled PCRE2 pattern in UTF + UCP mode, so \p{L}, \s, \d behave on Unicode text the way
// the Oniguruma patterns in tokenizer.json files expect.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fh1 {

class Regex {
 public:
  // Throws fh1::Error naming `where` and the PCRE2 message when the pattern does not compile.
  Regex(const std::string& pattern, const std::string& where);
  // Builds a pattern that matches `literal` verbatim.
  static Regex literal(std::string_view literal, const std::string& where);

  // Byte spans [begin, end) of successive non-overlapping matches in `text` (valid UTF-8).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

 private:
  struct Compiled;
  std::shared_ptr<const Compiled> compiled_;
};

}  // namespace fh1
