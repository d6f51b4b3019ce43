// Python's str algorithms on UTF-8: case mapping, title, split, replace.
//
// Case mapping covers ASCII, Latin-1 and basic Cyrillic, and leaves caseless scripts (CJK,
// Arabic, Hebrew, Devanagari, emoji, ...) alone. For the other cased scripts (Greek, Latin
// Extended, Armenian, ...) it throws instead of guessing, so output never silently differs
// from Python's.
#include <string>

#include "chat/builtins.h"
#include "util/error.h"

namespace fh1::jinja {
namespace {

uint32_t decode(std::string_view cp) {
  auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(cp[i])); };
  switch (cp.size()) {
    case 1: return b(0);
    case 2: return ((b(0) & 0x1f) << 6) | (b(1) & 0x3f);
    case 3: return ((b(0) & 0x0f) << 12) | ((b(1) & 0x3f) << 6) | (b(2) & 0x3f);
    default: return ((b(0) & 0x07) << 18) | ((b(1) & 0x3f) << 12) | ((b(2) & 0x3f) << 6) | (b(3) & 0x3f);
  }
}

void encode(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

bool in_unsupported_cased_range(uint32_t c) {
  static const uint32_t kRanges[][2] = {
      {0x0100, 0x02af}, {0x0345, 0x0345}, {0x0370, 0x03ff}, {0x0460, 0x058f}, {0x10a0, 0x10ff},
      {0x13a0, 0x13ff}, {0x1c80, 0x1cbf}, {0x1d00, 0x1dbf}, {0x1e00, 0x1fff}, {0x2100, 0x218f},
      {0x24b6, 0x24e9}, {0x2c00, 0x2d2f}, {0x2de0, 0x2dff}, {0xa640, 0xa69f}, {0xa720, 0xa7ff},
      {0xab30, 0xabbf}, {0xfb00, 0xfb17}, {0xff21, 0xff5a}, {0x10400, 0x1044f}, {0x104b0, 0x104ff},
      {0x10570, 0x105bf}, {0x10c80, 0x10cff}, {0x118a0, 0x118ff}, {0x16e40, 0x16e9f},
      {0x1e900, 0x1e95f}};
  for (const auto& r : kRanges) {
    if (c >= r[0] && c <= r[1]) return true;
  }
  return false;
}

enum class Case { Upper, Lower, Title };

bool is_cased(uint32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  if (c == 0xaa || c == 0xb5 || c == 0xba) return true;
  if (c >= 0xc0 && c <= 0xff) return c != 0xd7 && c != 0xf7;
  return c >= 0x400 && c <= 0x45f;
}

void map_case(std::string_view cp, Case target, std::string& out) {
  uint32_t c = decode(cp);
  if (in_unsupported_cased_range(c)) {
    throw Error("case conversion of '" + std::string(cp) +
                "' is not supported (only ASCII, Latin-1 and basic Cyrillic letters are)");
  }
  if (target == Case::Lower) {
    if ((c >= 'A' && c <= 'Z') || (c >= 0xc0 && c <= 0xde && c != 0xd7) || (c >= 0x410 && c <= 0x42f)) {
      return encode(c + 0x20, out);
    }
    if (c >= 0x400 && c <= 0x40f) return encode(c + 0x50, out);
    out += cp;
    return;
  }
  if (c == 0xdf) {  // sharp s: "SS" in upper case, "Ss" in title case
    out += target == Case::Upper ? "SS" : "Ss";
    return;
  }
  if ((c >= 'a' && c <= 'z') || (c >= 0xe0 && c <= 0xfe && c != 0xf7) || (c >= 0x430 && c <= 0x44f)) {
    return encode(c - 0x20, out);
  }
  if (c >= 0x450 && c <= 0x45f) return encode(c - 0x50, out);
  if (c == 0xff) return encode(0x178, out);
  if (c == 0xb5) return encode(0x39c, out);
  out += cp;
}

std::string map_all(const std::string& s, Case target) {
  std::string out;
  out.reserve(s.size());
  for (std::string_view cp : split_code_points(s)) map_case(cp, target, out);
  return out;
}

}  // namespace

std::string python_upper(const std::string& s) { return map_all(s, Case::Upper); }
std::string python_lower(const std::string& s) { return map_all(s, Case::Lower); }

std::string python_capitalize(const std::string& s) {
  std::string out;
  bool first = true;
  for (std::string_view cp : split_code_points(s)) {
    map_case(cp, first ? Case::Title : Case::Lower, out);
    first = false;
  }
  return out;
}

std::string python_title(const std::string& s) {
  // str.title(): a cased letter after a cased letter is lowered, any other is title-cased.
  std::string out;
  bool previous_cased = false;
  for (std::string_view cp : split_code_points(s)) {
    uint32_t c = decode(cp);
    if (in_unsupported_cased_range(c)) map_case(cp, Case::Lower, out);  // throws
    if (is_cased(c)) {
      map_case(cp, previous_cased ? Case::Lower : Case::Title, out);
      previous_cased = true;
    } else {
      out += cp;
      previous_cased = false;
    }
  }
  return out;
}

std::string python_replace(const std::string& s, const std::string& old_text, const std::string& new_text,
                           int64_t count) {
  std::string out;
  if (old_text.empty()) {
    // Python inserts the replacement before every character and at the end.
    auto chars = split_code_points(s);
    int64_t done = 0;
    for (std::string_view c : chars) {
      if (count < 0 || done < count) {
        out += new_text;
        ++done;
      }
      out += c;
    }
    if (count < 0 || done < count) out += new_text;
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t hit = s.find(old_text, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += new_text;
    pos = hit + old_text.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

List python_split(const std::string& s, const Value& separator, int64_t max_split) {
  List parts;
  if (separator.is_undefined() || separator.is_none()) {
    // Runs of whitespace separate; leading and trailing whitespace yields no empty parts.
    auto chars = split_code_points(s);
    size_t i = 0;
    while (true) {
      while (i < chars.size() && is_python_whitespace(chars[i])) ++i;
      if (i == chars.size()) break;
      if (max_split >= 0 && static_cast<int64_t>(parts.size()) == max_split) {
        std::string rest;
        for (size_t k = i; k < chars.size(); ++k) rest += chars[k];
        parts.push_back(Value(rest));
        break;
      }
      std::string word;
      while (i < chars.size() && !is_python_whitespace(chars[i])) word += chars[i++];
      parts.push_back(Value(word));
    }
    return parts;
  }
  if (!separator.is_string()) throw Error("split(): separator must be str or None, not " + separator.type_name());
  const std::string& sep = separator.as_string();
  if (sep.empty()) throw Error("split(): empty separator");
  size_t pos = 0;
  while (max_split < 0 || static_cast<int64_t>(parts.size()) < max_split) {
    size_t hit = s.find(sep, pos);
    if (hit == std::string::npos) break;
    parts.push_back(Value(s.substr(pos, hit - pos)));
    pos = hit + sep.size();
  }
  parts.push_back(Value(s.substr(pos)));
  return parts;
}

}  // namespace fh1::jinja
