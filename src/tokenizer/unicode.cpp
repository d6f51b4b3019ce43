#include "tokenizer/unicode.h"

#include <utf8proc.h>

#include <cstdlib>
#include <memory>

#include "util/error.h"

namespace fh1::unicode {

char32_t next_code_point(std::string_view s, size_t& pos) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  const size_t len = utf8_char_len(b0);
  if (len == 1 || pos + len > s.size()) {
    ++pos;
    return b0 < 0x80 ? b0 : kReplacementChar;
  }
  char32_t cp = b0 & (0x7F >> len);
  for (size_t i = 1; i < len; ++i) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + i]) & 0x3F);
  pos += len;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::u32string to_u32(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) out.push_back(next_code_point(s, pos));
  return out;
}

std::string to_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

namespace {

// Number of bytes of a valid UTF-8 prefix of the sequence at s[pos]: returns the full length when
// the sequence is complete and valid, otherwise the length of the maximal valid subpart (>= 1 for a
// lead byte that could start a sequence, 0 for a byte that can never start one). `complete` tells
// which case it is.
size_t scan_sequence(std::string_view s, size_t pos, bool& complete) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  complete = false;
  if (b0 < 0x80) {
    complete = true;
    return 1;
  }
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    return 0;
  }
  size_t i = 1;
  for (; i < len && pos + i < s.size(); ++i) {
    const auto b = static_cast<unsigned char>(s[pos + i]);
    const bool ok = (i == 1) ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return i;
  }
  complete = (i == len);
  return i;
}

}  // namespace

bool is_valid_utf8(std::string_view s) {
  for (size_t pos = 0; pos < s.size();) {
    bool complete;
    const size_t n = scan_sequence(s, pos, complete);
    if (!complete) return false;
    pos += n;
  }
  return true;
}

std::string to_valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    bool complete;
    const size_t n = scan_sequence(s, pos, complete);
    if (complete) {
      out.append(s.data() + pos, n);
      pos += n;
    } else {
      append_utf8(out, kReplacementChar);  // one U+FFFD per maximal invalid subpart
      pos += n == 0 ? 1 : n;
    }
  }
  return out;
}

size_t complete_utf8_prefix(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    bool complete;
    const size_t n = scan_sequence(s, pos, complete);
    if (!complete && pos + n == s.size() && n > 0) return pos;  // truncated tail: wait for more
    pos += n == 0 ? 1 : n;
  }
  return pos;
}

bool is_whitespace(char32_t c) {
  switch (c) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

// Rust uses the derived Alphabetic property (letters, Nl and Other_Alphabetic, which is mostly
// spacing/nonspacing vowel signs). utf8proc has no property tables, so we take L*, Nl and Mc: it
// only matters for the single_word check of added tokens.
bool is_alphabetic(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_MC;
}

bool is_alphanumeric(char32_t c) { return is_alphabetic(c) || is_numeric(c); }

bool is_punctuation(char32_t c) {
  if (c < 0x80) {
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
           (c >= 0x7B && c <= 0x7E);
  }
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

bool is_mark_nonspacing(char32_t c) {
  return c >= 0x300 && utf8proc_category(static_cast<utf8proc_int32_t>(c)) == UTF8PROC_CATEGORY_MN;
}

namespace {

std::string utf8proc_normalize(std::string_view s, int options) {
  // Pure ASCII is invariant under every normalization form: skip the allocation-heavy call.
  bool ascii = true;
  for (char ch : s) ascii = ascii && static_cast<unsigned char>(ch) < 0x80;
  if (ascii) return std::string(s);
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          static_cast<utf8proc_ssize_t>(s.size()), &result,
                                          static_cast<utf8proc_option_t>(options | UTF8PROC_STABLE));
  if (n < 0) throw Error(std::string("unicode normalization failed: ") + utf8proc_errmsg(n));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> guard(result, &std::free);
  return std::string(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
}

}  // namespace

std::string nfc(std::string_view s) { return utf8proc_normalize(s, UTF8PROC_COMPOSE); }
std::string nfd(std::string_view s) { return utf8proc_normalize(s, UTF8PROC_DECOMPOSE); }
std::string nfkc(std::string_view s) {
  return utf8proc_normalize(s, UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
}
std::string nfkd(std::string_view s) {
  return utf8proc_normalize(s, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
}

std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    const char32_t c = next_code_point(s, pos);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c));
    } else if (c == 0x130) {
      // The one code point whose full lowercase mapping is two characters (SpecialCasing.txt).
      append_utf8(out, U'i');
      append_utf8(out, 0x307);
    } else {
      append_utf8(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
    }
  }
  return out;
}

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet table = [] {
    ByteLevelAlphabet t;
    t.char_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      // Printable Latin-1 bytes stand for themselves; the others are shifted past U+00FF.
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      append_utf8(t.byte_to_utf8[b], cp);
      t.char_to_byte[cp] = b;
    }
    return t;
  }();
  return table;
}

}  // namespace fh1::unicode
