#include "cli/common.h"

#include <cctype>
#include <charconv>

#include "util/error.h"

namespace fh1::cli {

std::vector<CommandFactory>& command_registry() {
  static std::vector<CommandFactory> registry;
  return registry;
}

std::vector<int32_t> parse_id_list(const std::string& text) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (std::isspace(static_cast<unsigned char>(text[i])) || text[i] == '[')) ++i;
    size_t j = i;
    while (j < text.size() && text[j] != ',' && text[j] != ']') ++j;
    size_t e = j;
    while (e > i && std::isspace(static_cast<unsigned char>(text[e - 1]))) --e;
    if (e > i) {
      int64_t v = 0;
      const auto r = std::from_chars(text.data() + i, text.data() + e, v);
      if (r.ec != std::errc() || r.ptr != text.data() + e || v < 0 || v > INT32_MAX)
        throw Error("--ids: '" + text.substr(i, e - i) + "' is not a token id (a non-negative integer)");
      ids.push_back(static_cast<int32_t>(v));
    } else if (j < text.size() && text[j] == ',') {
      throw Error("--ids: empty element in '" + text + "'");
    }
    i = j + 1;
  }
  return ids;
}

}  // namespace fh1::cli
