// The UTF-8 helpers the whole tokenizer relies on.
#include <gtest/gtest.h>

#include "tokenizer/unicode.h"

namespace fh1::unicode {
namespace {

const std::string kFFFD = "\xEF\xBF\xBD";

TEST(Utf8, InvalidBytesBecomeReplacementCharacters) {
  // Same results as Python's bytes.decode("utf-8", errors="replace").
  EXPECT_EQ(to_valid_utf8("abc"), "abc");
  EXPECT_EQ(to_valid_utf8("a\xFF" "b"), "a" + kFFFD + "b");
  EXPECT_EQ(to_valid_utf8("\xE4\xB8"), kFFFD);                  // truncated: one U+FFFD
  EXPECT_EQ(to_valid_utf8("\xC0\xAF"), kFFFD + kFFFD);          // overlong
  EXPECT_EQ(to_valid_utf8("\xED\xA0\x80"), kFFFD + kFFFD + kFFFD);  // surrogate
  EXPECT_EQ(to_valid_utf8("\xF4\x90\x80\x80"), kFFFD + kFFFD + kFFFD + kFFFD);  // > U+10FFFF
  EXPECT_EQ(to_valid_utf8("\xF0\x9F\x98" "x"), kFFFD + "x");
  EXPECT_TRUE(is_valid_utf8("\xF0\x9F\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xF0\x9F\x98"));
}

TEST(Utf8, CompletePrefix) {
  EXPECT_EQ(complete_utf8_prefix("ab\xE4\xB8"), 2u);
  EXPECT_EQ(complete_utf8_prefix("ab\xE4\xB8\xAD"), 5u);
  EXPECT_EQ(complete_utf8_prefix("ab\xFF"), 3u);  // invalid, not incomplete
}

TEST(Utf8, CodePointsRoundTrip) {
  const std::string s = "a\u00e9\u4e2d\U0001F600";
  EXPECT_EQ(to_utf8(to_u32(s)), s);
  EXPECT_EQ(to_u32(s).size(), 4u);
}

TEST(ByteLevel, AlphabetIsABijection) {
  const auto& a = byte_level_alphabet();
  for (int b = 0; b < 256; ++b) {
    size_t pos = 0;
    const char32_t c = next_code_point(a.byte_to_utf8[b], pos);
    ASSERT_LT(c, a.char_to_byte.size());
    EXPECT_EQ(a.char_to_byte[c], b);
  }
  EXPECT_EQ(a.byte_to_utf8[' '], "\u0120");  // the famous "Ġ"
}

TEST(Normalization, Forms) {
  EXPECT_EQ(nfc("e\u0301"), "\u00e9");
  EXPECT_EQ(nfd("\u00e9"), "e\u0301");
  EXPECT_EQ(nfkc("\ufb01"), "fi");
  EXPECT_EQ(lowercase("\u0130A\u03a3"), "i\u0307a\u03c3");
}

}  // namespace
}  // namespace fh1::unicode
