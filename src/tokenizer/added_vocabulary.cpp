#include "tokenizer/added_vocabulary.h"

#include <nlohmann/json.hpp>

#include <algorithm>

#include "tokenizer/json_util.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

#include <utf8proc.h>

namespace fh1 {
namespace {

// Rust regex's \w: alphabetic, marks, decimal digits, connector punctuation, joiners.
bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  if (c == 0x200C || c == 0x200D) return true;
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_MN && cat <= UTF8PROC_CATEGORY_ME) ||
         cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_PC;
}

char32_t last_char(std::string_view s) {
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return unicode::next_code_point(s, start);
}

}  // namespace

bool AddedVocabulary::Matcher::empty() const {
  return std::all_of(by_first_byte.begin(), by_first_byte.end(),
                     [](const auto& bucket) { return bucket.empty(); });
}

void AddedVocabulary::add_pattern(Matcher& m, std::string text, size_t token) {
  if (text.empty()) return;
  auto& bucket = m.by_first_byte[static_cast<unsigned char>(text[0])];
  // A later token with the same text replaces the earlier one (last definition wins).
  bucket.erase(std::remove_if(bucket.begin(), bucket.end(),
                              [&](const Pattern& p) { return p.text == text; }),
               bucket.end());
  bucket.push_back({std::move(text), token});
  std::stable_sort(bucket.begin(), bucket.end(),
                   [](const Pattern& a, const Pattern& b) { return a.text.size() > b.text.size(); });
}

AddedVocabulary::AddedVocabulary(const nlohmann::json& added_tokens, const Normalizer* normalizer) {
  if (added_tokens.is_null()) return;
  if (!added_tokens.is_array()) {
    throw fh1::mismatch("tokenizer.json: added_tokens", "an array", added_tokens.type_name());
  }
  for (const auto& spec : added_tokens) {
    AddedToken t;
    const auto& id = json_util::get_field(spec, "id", "added_tokens[]");
    if (!id.is_number_integer() || id.get<int64_t>() < 0) {
      throw fh1::mismatch("tokenizer.json: added_tokens[].id", "a non-negative integer", id.dump());
    }
    t.id = id.get<int32_t>();
    t.content = json_util::get_string(spec, "content", "added_tokens[]");
    t.single_word = json_util::get_bool_or(spec, "single_word", false, "added_tokens[]");
    t.lstrip = json_util::get_bool_or(spec, "lstrip", false, "added_tokens[]");
    t.rstrip = json_util::get_bool_or(spec, "rstrip", false, "added_tokens[]");
    t.special = json_util::get_bool_or(spec, "special", false, "added_tokens[]");
    t.normalized = json_util::get_bool_or(spec, "normalized", !t.special, "added_tokens[]");
    const size_t index = tokens_.size();
    max_id_ = std::max(max_id_, t.id);
    by_id_[t.id] = index;
    by_content_[t.content] = index;
    if (t.normalized) {
      add_pattern(normalized_patterns_,
                  normalizer ? normalizer->normalize(unicode::to_valid_utf8(t.content)) : t.content,
                  index);
    } else {
      add_pattern(raw_patterns_, t.content, index);
    }
    tokens_.push_back(std::move(t));
  }
}

std::vector<Segment> AddedVocabulary::split(std::string_view text, bool normalized_tokens) const {
  const Matcher& matcher = normalized_tokens ? normalized_patterns_ : raw_patterns_;
  std::vector<Segment> out;
  size_t consumed = 0;  // end of the previous token (HF start_offset)
  size_t pos = 0;
  while (pos < text.size()) {
    // Leftmost-longest: the first position where any pattern matches, the longest one there.
    const auto& bucket = matcher.by_first_byte[static_cast<unsigned char>(text[pos])];
    const Pattern* found = nullptr;
    for (const auto& p : bucket) {
      if (text.compare(pos, p.text.size(), p.text) == 0) {
        found = &p;
        break;
      }
    }
    if (found == nullptr) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[found->token];
    size_t start = pos, stop = pos + found->text.size();
    pos = stop;  // the matcher resumes after the raw match whatever we decide below
    if (token.single_word) {
      const bool word_before = start > 0 && is_word_char(last_char(text.substr(0, start)));
      size_t after = stop;
      const bool word_after =
          stop < text.size() && is_word_char(unicode::next_code_point(text, after));
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t ch = s - 1;
        while (ch > 0 && (static_cast<unsigned char>(text[ch]) & 0xC0) == 0x80) --ch;
        size_t probe = ch;
        if (!unicode::is_whitespace(unicode::next_code_point(text, probe))) break;
        s = ch;
      }
      start = std::max(s, consumed);  // never eat into the previous match
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        size_t next = stop;
        if (!unicode::is_whitespace(unicode::next_code_point(text, next))) break;
        stop = next;
      }
    }
    if (consumed < start) out.push_back({-1, consumed, start});
    out.push_back({token.id, start, stop});
    consumed = stop;
  }
  if (consumed < text.size()) out.push_back({-1, consumed, text.size()});
  return out;
}

const AddedToken* AddedVocabulary::find_by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocabulary::find_by_content(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  if (it == by_content_.end()) return std::nullopt;
  return tokens_[it->second].id;
}

}  // namespace fh1
