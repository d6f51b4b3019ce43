#include "tokenizer/decoder.h"

#include <nlohmann/json.hpp>

#include "tokenizer/json_util.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace fh1 {
namespace {

using json = nlohmann::json;

class ByteLevelDecoder final : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    const auto& alphabet = unicode::byte_level_alphabet();
    std::string bytes;
    for (const auto& token : tokens) {
      // A token with a character outside the byte alphabet (e.g. an added token written in plain
      // text) contributes its raw UTF-8, as in HF.
      const size_t mark = bytes.size();
      bool all_mapped = true;
      for (size_t pos = 0; pos < token.size();) {
        const char32_t c = unicode::next_code_point(token, pos);
        if (c >= alphabet.char_to_byte.size() || alphabet.char_to_byte[c] < 0) {
          all_mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(alphabet.char_to_byte[c]));
      }
      if (!all_mapped) {
        bytes.resize(mark);
        bytes += token;
      }
    }
    return {unicode::to_valid_utf8(bytes)};
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& token = tokens[i];
      for (size_t pos = 0; pos < token.size();) {
        if (token.compare(pos, replacement_.size(), replacement_) == 0) {
          // HF drops every meta symbol of the first token when a prefix space was prepended.
          if (!(i == 0 && strip_first_)) out.push_back(' ');
          pos += replacement_.size();
        } else {
          out.push_back(token[pos++]);
        }
      }
      tokens[i] = std::move(out);
    }
    return tokens;
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class ByteFallbackDecoder final : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::vector<std::string> out;
    std::string pending;  // bytes of consecutive <0xXX> tokens
    auto flush = [&] {
      if (pending.empty()) return;
      if (unicode::is_valid_utf8(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (auto& token : tokens) {
      int byte = -1;
      if (token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>') {
        byte = parse_hex(token[3], token[4]);
      }
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    return out;
  }

 private:
  static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static int parse_hex(char hi, char lo) {
    const int h = hex_digit(hi), l = hex_digit(lo);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
  }
};

class FuseDecoder final : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string joined;
    for (const auto& t : tokens) joined += t;
    return {joined};
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& token : tokens) {
      const std::u32string chars = unicode::to_u32(token);
      size_t begin = 0, end = chars.size();
      while (begin < start_ && begin < chars.size() && chars[begin] == content_) ++begin;
      for (size_t i = 0; i < stop_ && end > 0 && chars[end - 1] == content_; ++i) --end;
      token = begin < end ? unicode::to_utf8(std::u32string_view(chars).substr(begin, end - begin))
                          : std::string();
    }
    return tokens;
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Regex pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& token : tokens) {
      std::string out;
      size_t last = 0;
      for (auto [begin, end] : pattern_.find_all(token)) {
        out.append(token, last, begin - last);
        out += content_;
        last = end;
      }
      out.append(token, last, std::string::npos);
      token = std::move(out);
    }
    return tokens;
  }

 private:
  Regex pattern_;
  std::string content_;
};

// Legacy BPE decoder: the end-of-word suffix becomes a space, except on the last token.
class BpeSuffixDecoder final : public Decoder {
 public:
  explicit BpeSuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      const std::string replacement = i + 1 == tokens.size() ? "" : " ";
      std::string out;
      const std::string& t = tokens[i];
      for (size_t pos = 0; pos < t.size();) {
        if (!suffix_.empty() && t.compare(pos, suffix_.size(), suffix_) == 0) {
          out += replacement;
          pos += suffix_.size();
        } else {
          out.push_back(t[pos++]);
        }
      }
      tokens[i] = std::move(out);
    }
    return tokens;
  }

 private:
  std::string suffix_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (const auto& step : steps_) tokens = step->decode_chain(std::move(tokens));
    return tokens;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

size_t get_count(const json& spec, const char* key, const std::string& where) {
  const auto& value = json_util::get_field(spec, key, where);
  if (!value.is_number_unsigned()) {
    throw fh1::mismatch("tokenizer.json: " + where + "." + key, "a non-negative integer", value.dump());
  }
  return value.get<size_t>();
}

}  // namespace

std::unique_ptr<Decoder> parse_decoder(const json& spec) {
  if (spec.is_null()) return nullptr;
  const std::string type = json_util::get_type(spec, "decoder");
  const std::string where = "decoder " + type;
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Metaspace") {
    std::string replacement = "\xE2\x96\x81";
    if (spec.contains("replacement") && spec["replacement"].is_string())
      replacement = spec["replacement"].get<std::string>();
    bool strip_first = true;
    if (spec.contains("prepend_scheme") && spec["prepend_scheme"].is_string()) {
      strip_first = spec["prepend_scheme"].get<std::string>() != "never";
    } else {
      strip_first = json_util::get_bool_or(spec, "add_prefix_space", true, where);
    }
    return std::make_unique<MetaspaceDecoder>(replacement, strip_first);
  }
  if (type == "Strip") {
    const std::string content = json_util::get_string(spec, "content", where);
    size_t pos = 0;
    const char32_t c = content.empty() ? U' ' : unicode::next_code_point(content, pos);
    return std::make_unique<StripDecoder>(c, get_count(spec, "start", where),
                                          get_count(spec, "stop", where));
  }
  if (type == "Replace") {
    return std::make_unique<ReplaceDecoder>(json_util::parse_pattern(spec, where),
                                            json_util::get_string(spec, "content", where));
  }
  if (type == "BPEDecoder") {
    std::string suffix = "</w>";
    if (spec.contains("suffix") && spec["suffix"].is_string()) suffix = spec["suffix"].get<std::string>();
    return std::make_unique<BpeSuffixDecoder>(suffix);
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const auto& step : json_util::get_array(spec, "decoders", where)) {
      if (auto parsed = parse_decoder(step)) steps.push_back(std::move(parsed));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  throw Error("tokenizer.json: unsupported decoder type '" + type +
              "' (supported: ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, "
              "BPEDecoder, Sequence)");
}

}  // namespace fh1
