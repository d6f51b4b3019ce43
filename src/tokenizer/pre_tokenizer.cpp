#include "tokenizer/pre_tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>

#include "tokenizer/json_util.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace fh1 {
namespace {

using json = nlohmann::json;

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

SplitBehavior parse_behavior(const json& spec, const std::string& where,
                             SplitBehavior fallback) {
  auto it = spec.find("behavior");
  if (it == spec.end() || it->is_null()) return fallback;
  const std::string name = it->is_string() ? it->get<std::string>() : it->dump();
  // Older files spell the behaviors in lower case.
  if (name == "Removed" || name == "removed") return SplitBehavior::kRemoved;
  if (name == "Isolated" || name == "isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious" || name == "merged_with_previous")
    return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext" || name == "merged_with_next") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous" || name == "contiguous") return SplitBehavior::kContiguous;
  throw Error("tokenizer.json: " + where + ": unknown split behavior '" + name + "'");
}

struct Span {
  size_t begin, end;
  bool is_match;
};

// Turns match spans into a cover of [0, len) alternating non-match / match spans.
std::vector<Span> cover_with_spans(const std::vector<std::pair<size_t, size_t>>& matches,
                                   size_t len) {
  std::vector<Span> spans;
  spans.reserve(matches.size() * 2 + 1);
  size_t last = 0;
  for (auto [begin, end] : matches) {
    if (last < begin) spans.push_back({last, begin, false});
    spans.push_back({begin, end, true});
    last = end;
  }
  if (last < len) spans.push_back({last, len, false});
  return spans;
}

// Every character for which `pred` holds is its own match span (HF's Pattern for Fn(char)).
std::vector<std::pair<size_t, size_t>> char_matches(const std::string& text,
                                                    const std::function<bool(char32_t)>& pred) {
  std::vector<std::pair<size_t, size_t>> matches;
  for (size_t pos = 0; pos < text.size();) {
    const size_t begin = pos;
    if (pred(unicode::next_code_point(text, pos))) matches.emplace_back(begin, pos);
  }
  return matches;
}

// Applies a split behavior (HF SplitDelimiterBehavior) to the spans of one piece.
void split_piece(const Piece& piece, std::vector<Span> spans, SplitBehavior behavior, bool invert,
                 std::vector<Piece>& out) {
  if (invert) {
    for (auto& s : spans) s.is_match = !s.is_match;
  }
  std::vector<std::pair<size_t, size_t>> parts;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& s : spans) parts.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kRemoved:
      for (const auto& s : spans)
        if (!s.is_match) parts.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& s : spans) {
        if (s.is_match && !previous_match && !parts.empty()) {
          parts.back().second = s.end;
        } else {
          parts.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;  // walking backwards: "previous" is the span to the right
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !parts.empty()) {
          parts.back().first = it->begin;
        } else {
          parts.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const auto& s : spans) {
        if (s.is_match == previous_match && !parts.empty()) {
          parts.back().second = s.end;
        } else {
          parts.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    }
  }
  for (auto [begin, end] : parts) {
    if (end > begin) {
      out.push_back({piece.text.substr(begin, end - begin), piece.at_origin && begin == 0});
    }
  }
}

class RegexSplit final : public PreTokenizer {
 public:
  RegexSplit(Regex pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size() * 2);
    for (const auto& piece : pieces) {
      split_piece(piece, cover_with_spans(pattern_.find_all(piece.text), piece.text.size()),
                  behavior_, invert_, out);
    }
    pieces = std::move(out);
  }

 private:
  Regex pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class CharSplit final : public PreTokenizer {
 public:
  CharSplit(std::function<bool(char32_t)> pred, SplitBehavior behavior)
      : pred_(std::move(pred)), behavior_(behavior) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size() * 2);
    for (const auto& piece : pieces) {
      split_piece(piece, cover_with_spans(char_matches(piece.text, pred_), piece.text.size()),
                  behavior_, false, out);
    }
    pieces = std::move(out);
  }

 private:
  std::function<bool(char32_t)> pred_;
  SplitBehavior behavior_;
};

// GPT-2's pre-tokenization regex, used by ByteLevel when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex),
        gpt2_(kGpt2Pattern, "pre_tokenizer ByteLevel") {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    const auto& alphabet = unicode::byte_level_alphabet();
    std::vector<Piece> split;
    split.reserve(pieces.size() * 2);
    for (auto& piece : pieces) {
      // HF prepends the space to every piece that lacks one, not only to the first.
      if (add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' '))
        piece.text = " " + piece.text;  // (not insert(): GCC 12 -Wrestrict false positive)
      if (use_regex_) {
        split_piece(piece, cover_with_spans(gpt2_.find_all(piece.text), piece.text.size()),
                    SplitBehavior::kIsolated, false, split);
      } else if (!piece.text.empty()) {
        split.push_back(std::move(piece));
      }
    }
    for (auto& piece : split) {
      std::string mapped;
      mapped.reserve(piece.text.size() * 2);
      for (unsigned char b : piece.text) mapped += alphabet.byte_to_utf8[b];
      piece.text = std::move(mapped);
    }
    pieces = std::move(split);
  }

 private:
  bool add_prefix_space_, use_regex_;
  Regex gpt2_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {
    size_t pos = 0;
    replacement_cp_ = unicode::next_code_point(replacement_, pos);
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (auto& piece : pieces) {
      std::string replaced;
      replaced.reserve(piece.text.size() + 3);
      for (char ch : piece.text) {
        if (ch == ' ') replaced += replacement_;
        else replaced.push_back(ch);
      }
      const bool starts_with_replacement = replaced.rfind(replacement_, 0) == 0;
      if (!starts_with_replacement &&
          (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && piece.at_origin))) {
        replaced = replacement_ + replaced;
      }
      Piece p{std::move(replaced), piece.at_origin};
      if (!split_) {
        if (!p.text.empty()) out.push_back(std::move(p));
        continue;
      }
      const char32_t rep = replacement_cp_;
      split_piece(p, cover_with_spans(char_matches(p.text, [rep](char32_t c) { return c == rep; }),
                                      p.text.size()),
                  SplitBehavior::kMergedWithNext, false, out);
    }
    pieces = std::move(out);
  }

 private:
  std::string replacement_;
  char32_t replacement_cp_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& step : steps_) step->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

PrependScheme parse_prepend_scheme(const json& spec) {
  auto it = spec.find("prepend_scheme");
  if (it != spec.end() && it->is_string()) {
    const std::string s = it->get<std::string>();
    if (s == "always") return PrependScheme::kAlways;
    if (s == "first") return PrependScheme::kFirst;
    if (s == "never") return PrependScheme::kNever;
    throw Error("tokenizer.json: Metaspace: unknown prepend_scheme '" + s + "'");
  }
  // Files older than the prepend_scheme field use add_prefix_space.
  return json_util::get_bool_or(spec, "add_prefix_space", true, "Metaspace")
             ? PrependScheme::kAlways
             : PrependScheme::kNever;
}

}  // namespace

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const json& spec) {
  if (spec.is_null()) return nullptr;
  const std::string type = json_util::get_type(spec, "pre_tokenizer");
  const std::string where = "pre_tokenizer " + type;
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(
        json_util::get_bool_or(spec, "add_prefix_space", true, where),
        json_util::get_bool_or(spec, "use_regex", true, where));
  }
  if (type == "Split") {
    return std::make_unique<RegexSplit>(
        json_util::parse_pattern(spec, where),
        parse_behavior(spec, where, SplitBehavior::kIsolated),
        json_util::get_bool_or(spec, "invert", false, where));
  }
  if (type == "Digits") {
    const bool individual = json_util::get_bool_or(spec, "individual_digits", false, where);
    return std::make_unique<CharSplit>(
        [](char32_t c) { return unicode::is_numeric(c); },
        individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous);
  }
  if (type == "Punctuation") {
    return std::make_unique<CharSplit>([](char32_t c) { return unicode::is_punctuation(c); },
                                       parse_behavior(spec, where, SplitBehavior::kIsolated));
  }
  if (type == "WhitespaceSplit") {
    return std::make_unique<CharSplit>([](char32_t c) { return unicode::is_whitespace(c); },
                                       SplitBehavior::kRemoved);
  }
  if (type == "CharDelimiterSplit") {
    const std::string delimiter = json_util::get_string(spec, "delimiter", where);
    size_t pos = 0;
    const char32_t d = delimiter.empty() ? 0 : unicode::next_code_point(delimiter, pos);
    return std::make_unique<CharSplit>([d](char32_t c) { return c == d; },
                                       SplitBehavior::kRemoved);
  }
  if (type == "Whitespace") {
    // HF keeps the matches of \w+|[^\w\s]+. PCRE2's \w lacks combining marks, which Rust's \w
    // (and therefore HF) includes, so spell the class out.
    constexpr const char* kWord = R"(\p{L}\p{M}\p{Nd}\p{Nl}\p{Pc}\x{200C}\x{200D})";
    const std::string pattern =
        std::string("[") + kWord + "]+|[^" + kWord + R"(\s]+)";
    return std::make_unique<RegexSplit>(Regex(pattern, where), SplitBehavior::kRemoved, true);
  }
  if (type == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    steps.push_back(std::make_unique<CharSplit>(
        [](char32_t c) { return unicode::is_whitespace(c); }, SplitBehavior::kRemoved));
    steps.push_back(std::make_unique<CharSplit>(
        [](char32_t c) { return unicode::is_punctuation(c); }, SplitBehavior::kIsolated));
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Metaspace") {
    std::string replacement = "\xE2\x96\x81";  // U+2581, the SentencePiece meta symbol
    if (spec.contains("replacement") && spec["replacement"].is_string())
      replacement = spec["replacement"].get<std::string>();
    if (replacement.empty()) throw Error("tokenizer.json: Metaspace: empty replacement");
    return std::make_unique<MetaspacePreTokenizer>(replacement, parse_prepend_scheme(spec),
                                                   json_util::get_bool_or(spec, "split", true, where));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const auto& step : json_util::get_array(spec, "pretokenizers", where)) {
      if (auto parsed = parse_pre_tokenizer(step)) steps.push_back(std::move(parsed));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  throw Error("tokenizer.json: unsupported pre_tokenizer type '" + type +
              "' (supported: ByteLevel, Split, Digits, Punctuation, Whitespace, WhitespaceSplit, "
              "CharDelimiterSplit, BertPreTokenizer, Metaspace, Sequence)");
}

}  // namespace fh1
