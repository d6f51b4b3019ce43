// UTF-8 and Unicode helpers shared by the tokenizer stages.
//
// Everything in the tokenizer works on UTF-8 std::string. Input text is first made valid with
// to_valid_utf8() (invalid bytes -> U+FFFD, the same result as Rust's String::from_utf8_lossy and
// Python's bytes.decode("utf-8", errors="replace")), so later stages may assume valid UTF-8.
// Character classes follow the definitions Rust's `char` uses, because HF `tokenizers` is Rust.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fh1::unicode {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Length in bytes of the (valid) UTF-8 sequence starting with lead byte `b`; 1 for stray bytes.
inline size_t utf8_char_len(unsigned char b) {
  if (b < 0x80) return 1;
  if ((b & 0xE0) == 0xC0) return 2;
  if ((b & 0xF0) == 0xE0) return 3;
  if ((b & 0xF8) == 0xF0) return 4;
  return 1;
}

// Decodes the code point at s[pos] (s must be valid UTF-8) and advances pos past it.
char32_t next_code_point(std::string_view s, size_t& pos);
void append_utf8(std::string& out, char32_t cp);
std::u32string to_u32(std::string_view s);
std::string to_utf8(std::u32string_view s);

bool is_valid_utf8(std::string_view s);
// Replaces every maximal invalid subsequence by U+FFFD (WHATWG / Unicode "maximal subpart" rule).
std::string to_valid_utf8(std::string_view s);
// Length of the longest prefix of s that ends on a complete UTF-8 character boundary, treating a
// truncated-but-so-far-valid sequence at the very end as incomplete.
size_t complete_utf8_prefix(std::string_view s);

// Rust char predicates.
bool is_whitespace(char32_t c);    // White_Space property
bool is_numeric(char32_t c);       // general category Nd | Nl | No
bool is_alphabetic(char32_t c);    // approximated as L* | Nl | Mn | Mc (see unicode.cpp)
bool is_alphanumeric(char32_t c);  // is_alphabetic || is_numeric
bool is_punctuation(char32_t c);   // ASCII punctuation or general category P*
bool is_mark_nonspacing(char32_t c);

// Normalization forms through utf8proc; input must be valid UTF-8.
std::string nfc(std::string_view s);
std::string nfd(std::string_view s);
std::string nfkc(std::string_view s);
std::string nfkd(std::string_view s);
// Per-character full lowercase mapping, as Rust's char::to_lowercase.
std::string lowercase(std::string_view s);

// GPT-2 byte <-> printable-character alphabet used by the ByteLevel components.
struct ByteLevelAlphabet {
  std::array<std::string, 256> byte_to_utf8;  // byte -> UTF-8 of its stand-in character
  std::array<int, 0x180> char_to_byte;        // stand-in code point -> byte, -1 if none
};
const ByteLevelAlphabet& byte_level_alphabet();

}  // namespace fh1::unicode
