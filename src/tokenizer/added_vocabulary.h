// Added tokens of tokenizer.json ("added_tokens"): they are cut out of the text before the
// normalizer / pre-tokenizer / model ever see it. Matching is leftmost-longest, like HF's
// Aho-Corasick matcher, then single_word / lstrip / rstrip are applied as HF does.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace fh1 {

class Normalizer;

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// One cut of a text: either an added token (id >= 0) or plain text [begin, end).
struct Segment {
  int32_t id;  // -1 for plain text
  size_t begin, end;
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  // `normalizer` (may be null) normalizes the content of tokens with normalized=true.
  AddedVocabulary(const nlohmann::json& added_tokens, const Normalizer* normalizer);

  // Cuts `text` by the tokens matched on raw text (normalized == false) or on normalized text.
  std::vector<Segment> split(std::string_view text, bool normalized_tokens) const;

  const AddedToken* find_by_id(int32_t id) const;
  std::optional<int32_t> find_by_content(std::string_view content) const;
  int32_t max_id() const { return max_id_; }
  bool has_normalized_tokens() const { return !normalized_patterns_.empty(); }

 private:
  struct Pattern {
    std::string text;  // what is matched (normalized content for normalized tokens)
    size_t token;      // index into tokens_
  };
  // Patterns bucketed by first byte, longest first, for the leftmost-longest scan.
  struct Matcher {
    std::vector<std::vector<Pattern>> by_first_byte = std::vector<std::vector<Pattern>>(256);
    bool empty() const;
  };
  static void add_pattern(Matcher& m, std::string text, size_t token);

  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Matcher raw_patterns_, normalized_patterns_;
  int32_t max_id_ = -1;
};

}  // namespace fh1
