#include "tokenizer/normalizer.h"

#include <nlohmann/json.hpp>

#include <vector>

#include "tokenizer/json_util.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace fh1 {
namespace {

using json = nlohmann::json;

class FormNormalizer final : public Normalizer {
 public:
  using Fn = std::string (*)(std::string_view);
  explicit FormNormalizer(Fn fn) : fn_(fn) {}
  std::string normalize(std::string text) const override { return fn_(text); }

 private:
  Fn fn_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Regex pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  std::string normalize(std::string text) const override {
    std::string out;
    size_t last = 0;
    for (auto [begin, end] : pattern_.find_all(text)) {
      out.append(text, last, begin - last);
      out += content_;
      last = end;
    }
    out.append(text, last, std::string::npos);
    return out;
  }

 private:
  Regex pattern_;
  std::string content_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string normalize(std::string text) const override {
    return text.empty() ? text : prefix_ + text;  // HF leaves empty strings alone
  }

 private:
  std::string prefix_;
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  std::string normalize(std::string text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      while (begin < end) {
        size_t next = begin;
        if (!unicode::is_whitespace(unicode::next_code_point(text, next))) break;
        begin = next;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        size_t pos = start;
        if (!unicode::is_whitespace(unicode::next_code_point(text, pos))) break;
        end = start;
      }
    }
    return text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class StripAccentsNormalizer final : public Normalizer {
 public:
  std::string normalize(std::string text) const override {
    std::string out;
    out.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) {
      const char32_t c = unicode::next_code_point(text, pos);
      if (!unicode::is_mark_nonspacing(c)) unicode::append_utf8(out, c);
    }
    return out;
  }
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  std::string normalize(std::string text) const override {
    for (const auto& step : steps_) text = step->normalize(std::move(text));
    return text;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

std::unique_ptr<Normalizer> parse_normalizer(const json& spec) {
  if (spec.is_null()) return nullptr;
  const std::string type = json_util::get_type(spec, "normalizer");
  if (type == "NFC") return std::make_unique<FormNormalizer>(&unicode::nfc);
  if (type == "NFD") return std::make_unique<FormNormalizer>(&unicode::nfd);
  if (type == "NFKC") return std::make_unique<FormNormalizer>(&unicode::nfkc);
  if (type == "NFKD") return std::make_unique<FormNormalizer>(&unicode::nfkd);
  if (type == "Lowercase") return std::make_unique<FormNormalizer>(&unicode::lowercase);
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "Replace") {
    return std::make_unique<ReplaceNormalizer>(
        json_util::parse_pattern(spec, "normalizer Replace"),
        json_util::get_string(spec, "content", "normalizer Replace"));
  }
  if (type == "Prepend") {
    return std::make_unique<PrependNormalizer>(
        json_util::get_string(spec, "prepend", "normalizer Prepend"));
  }
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(spec.value("strip_left", true),
                                             spec.value("strip_right", true));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const auto& step : json_util::get_array(spec, "normalizers", "normalizer Sequence")) {
      if (auto parsed = parse_normalizer(step)) steps.push_back(std::move(parsed));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  throw Error("tokenizer.json: unsupported normalizer type '" + type +
              "' (supported: NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, Replace, Prepend, "
              "Strip, Sequence)");
}

}  // namespace fh1
