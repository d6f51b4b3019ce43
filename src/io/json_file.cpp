#include "io/json_file.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "util/error.h"

namespace fh1 {

nlohmann::json parse_json_relaxed(const std::string& text, const std::string& where) {
  // Rewrite bare Infinity/-Infinity/NaN tokens outside strings as strings.
  std::string out;
  out.reserve(text.size() + 16);
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    bool replaced = false;
    for (const char* token : {"-Infinity", "Infinity", "NaN"}) {
      const size_t len = std::char_traits<char>::length(token);
      if (text.compare(i, len, token) == 0) {
        out += '"';
        out += token;
        out += '"';
        i += len - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  try {
    return nlohmann::json::parse(out);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(where + ": invalid JSON: " + e.what());
  }
}

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open (missing file?)");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path.string() + ": read error");
  return ss.str();
}

nlohmann::json read_json_file(const std::filesystem::path& path) {
  return parse_json_relaxed(read_text_file(path), path.string());
}

static double special_float(const std::string& s, const std::string& where) {
  if (s == "Infinity" || s == "inf" || s == "+inf") return std::numeric_limits<double>::infinity();
  if (s == "-Infinity" || s == "-inf") return -std::numeric_limits<double>::infinity();
  if (s == "NaN" || s == "nan") return std::numeric_limits<double>::quiet_NaN();
  throw mismatch(where, "a number", "the string \"" + s + "\"");
}

double json_number(const nlohmann::json& value, const std::string& where) {
  if (value.is_number()) return value.get<double>();
  if (value.is_string()) return special_float(value.get<std::string>(), where);
  if (value.is_object() && value.size() == 1 && value.contains("__float__") &&
      value["__float__"].is_string())
    return special_float(value["__float__"].get<std::string>(), where);
  throw mismatch(where, "a number", value.dump());
}

}  // namespace fh1
