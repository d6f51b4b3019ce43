// Parity with Hugging Face `tokenizers`: every fixture written by
// tests/python/make_tokenizer_fixtures.py must give the same ids and decodes.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace fh1 {
namespace {

using json = nlohmann::json;
// A function, not a global: fixture_names() runs during static initialization.
std::filesystem::path fixtures_dir() { return FH1_TOKENIZER_FIXTURES; }

json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return json::parse(buffer.str());
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  const json index = read_json(fixtures_dir() / "index.json");
  for (const auto& n : index["fixtures"]) names.push_back(n);
  return names;
}

std::string stream_decode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  StreamDecoder stream(tok, skip);
  std::string out;
  for (int32_t id : ids) {
    const std::string piece = stream.push(id);
    // Every piece handed out must be complete UTF-8 on its own.
    EXPECT_TRUE(unicode::is_valid_utf8(piece));
    out += piece;
  }
  return out + stream.flush();
}

class TokenizerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerParity, MatchesHuggingFace) {
  const auto dir = fixtures_dir() / GetParam();
  const Tokenizer tok = Tokenizer::from_dir(dir);
  const json expected = read_json(dir / "expected.json");
  EXPECT_EQ(tok.vocab_size(), expected["vocab_size"].get<size_t>());
  const bool lossless = expected["lossless"];
  size_t index = 0;
  for (const auto& c : expected["cases"]) {
    const bool valid = c.contains("text");
    const std::string text = valid ? c["text"].get<std::string>() : from_hex(c["hex"]);
    SCOPED_TRACE("case " + std::to_string(index++) + ": " + (valid ? text : "hex " + c["hex"].get<std::string>()));
    const auto ids = tok.encode(text, true);
    const auto plain = tok.encode(text, false);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(plain, c["ids_plain"].get<std::vector<int32_t>>());
    const auto expected_ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.decode(expected_ids, false), c["decoded"].get<std::string>());
    EXPECT_EQ(tok.decode(expected_ids, true), c["decoded_skip"].get<std::string>());
    EXPECT_EQ(stream_decode(tok, expected_ids, false), c["decoded"].get<std::string>());
    EXPECT_EQ(stream_decode(tok, expected_ids, true), c["decoded_skip"].get<std::string>());
    if (lossless && valid) {
      EXPECT_EQ(tok.decode(plain), text);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerParity, ::testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });

TEST(TokenizerFromDir, ReadsSideFiles) {
  const Tokenizer tok = Tokenizer::from_dir(fixtures_dir() / "falcon_h1_like");
  ASSERT_TRUE(tok.bos_id().has_value());
  ASSERT_TRUE(tok.eos_id().has_value());
  EXPECT_EQ(tok.id_to_token(*tok.bos_id()), "<|begin_of_text|>");
  EXPECT_EQ(tok.id_to_token(*tok.eos_id()), "<|end_of_text|>");
  EXPECT_TRUE(tok.is_special(*tok.eos_id()));
  EXPECT_NE(tok.chat_template().find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(tok.token_to_id("<|im_start|>"), tok.encode("<|im_start|>", false).at(0));
  EXPECT_EQ(tok.encode("hi").front(), *tok.bos_id());  // the post-processor adds bos
  EXPECT_FALSE(tok.token_to_id("definitely not a token").has_value());
  EXPECT_EQ(tok.id_to_token(1 << 28), "");
}

TEST(TokenizerFromDir, CopiesShareTheModel) {
  const Tokenizer a = Tokenizer::from_dir(fixtures_dir() / "bytelevel_digits_punct_300");
  const Tokenizer b = a;  // NOLINT: the copy is the point
  EXPECT_EQ(a.encode("shared 123"), b.encode("shared 123"));
}

TEST(StreamDecoder, NeverSplitsACharacter) {
  const Tokenizer tok = Tokenizer::from_dir(fixtures_dir() / "bytelevel_digits_punct_300");
  const std::string text = "中文 😀 ü ok";
  StreamDecoder stream(tok);
  std::string out;
  for (int32_t id : tok.encode(text, false)) {
    const std::string piece = stream.push(id);
    // No piece may end in the middle of a UTF-8 sequence.
    if (!piece.empty()) {
      const auto last = static_cast<unsigned char>(piece.back());
      EXPECT_TRUE(last < 0x80 || (last & 0xC0) == 0x80) << "piece ends with a lead byte";
    }
    EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos);
    out += piece;
  }
  out += stream.flush();
  EXPECT_EQ(out, text);
}

}  // namespace
}  // namespace fh1
