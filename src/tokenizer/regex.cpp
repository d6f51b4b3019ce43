#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "util/error.h"

namespace fh1 {

struct Regex::Compiled {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Compiled() { pcre2_code_free(code); }
};

Regex::Regex(const std::string& pattern, const std::string& where) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  auto compiled = std::make_shared<Compiled>();
  compiled->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                 PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (compiled->code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    throw Error(where + ": cannot compile regex '" + pattern + "' at offset " +
                std::to_string(error_offset) + ": " + reinterpret_cast<const char*>(message));
  }
  // JIT makes the pre-tokenizer regexes several times faster; fall back to the interpreter when
  // the platform has no JIT.
  compiled->jit = pcre2_jit_compile(compiled->code, PCRE2_JIT_COMPLETE) == 0;
  compiled_ = std::move(compiled);
}

Regex Regex::literal(std::string_view literal, const std::string& where) {
  // \Q...\E quotes everything except a literal "\E", which we split out.
  std::string pattern;
  size_t start = 0;
  while (true) {
    const size_t e = literal.find("\\E", start);
    pattern += "\\Q";
    pattern.append(literal.substr(start, e == std::string_view::npos ? e : e - start));
    pattern += "\\E";
    if (e == std::string_view::npos) break;
    pattern += "\\\\E";
    start = e + 2;
  }
  return Regex(pattern, where);
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> spans;
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(compiled_->code, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t offset = 0;
  while (offset <= text.size()) {
    // The caller guarantees valid UTF-8, so skip PCRE2's per-call validity scan (it is O(n)
    // per call and would make the loop quadratic).
    const int rc = compiled_->jit
                       ? pcre2_jit_match(compiled_->code, subject, text.size(), offset,
                                         PCRE2_NO_UTF_CHECK, match, nullptr)
                       : pcre2_match(compiled_->code, subject, text.size(), offset,
                                     PCRE2_NO_UTF_CHECK, match, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(match);
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      throw Error(std::string("regex match failed: ") + reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
    const size_t begin = ovector[0], end = ovector[1];
    spans.emplace_back(begin, end);
    if (end > begin) {
      offset = end;
    } else {
      // Empty match: step over one whole character, as Rust's regex iterators do.
      if (end >= text.size()) break;
      offset = end + 1;
      while (offset < text.size() && (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80)
        ++offset;
    }
  }
  pcre2_match_data_free(match);
  return spans;
}

}  // namespace fh1
