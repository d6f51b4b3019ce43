// Jinja's lexer, reduced to what chat templates use. The whitespace rules follow Jinja 3.1's
// Lexer.tokeniter so that output matches transformers byte for byte:
//  - the source's newlines are normalized to \n and one trailing newline is dropped;
//  - "{%-" / "{{-" / "{#-" strip all whitespace before the tag, "-%}" etc. all after it;
//  - trim_blocks: one newline right after "%}" or "#}" is dropped (not after "}}");
//  - lstrip_blocks: spaces/tabs between a line start and "{%" or "{#" are dropped, unless "{%+".
#include "chat/lexer.h"

#include <cctype>
#include <cstring>

#include "chat/value.h"
#include "util/error.h"

namespace fh1::jinja {

const char* token_type_name(TokenType type) {
  switch (type) {
    case TokenType::Text: return "text";
    case TokenType::VarBegin: return "'{{'";
    case TokenType::VarEnd: return "'}}'";
    case TokenType::BlockBegin: return "'{%'";
    case TokenType::BlockEnd: return "'%}'";
    case TokenType::Name: return "name";
    case TokenType::String: return "string";
    case TokenType::Integer: return "integer";
    case TokenType::Float: return "float";
    case TokenType::Operator: return "operator";
    case TokenType::End: return "end of template";
  }
  return "?";
}

namespace {

[[noreturn]] void fail(int line, const std::string& what) {
  throw Error("chat template syntax error, line " + std::to_string(line) + ": " + what);
}

std::string normalize_newlines(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();  // keep_trailing_newline=False
  return out;
}

void append_utf8(std::string& out, uint32_t cp, int line) {
  if (cp >= 0xd800 && cp <= 0xdfff) fail(line, "string literal escapes a lone surrogate");
  if (cp > 0x10ffff) fail(line, "string literal escape is beyond U+10FFFF");
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

// Python's "unicode-escape" decoding, which Jinja applies to string literals.
std::string decode_string_literal(const std::string& body, int line) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c != '\\' || i + 1 == body.size()) {
      out += c;
      continue;
    }
    char e = body[++i];
    auto hex = [&](size_t digits) {
      uint32_t cp = 0;
      for (size_t k = 1; k <= digits; ++k) {
        if (i + k >= body.size() || !std::isxdigit(static_cast<unsigned char>(body[i + k]))) {
          fail(line, "truncated \\x/\\u escape in string literal");
        }
        char h = body[i + k];
        cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                                 ? h - '0'
                                                 : std::tolower(static_cast<unsigned char>(h)) - 'a' + 10);
      }
      i += digits;
      return cp;
    };
    switch (e) {
      case '\n': break;  // backslash-newline continues the line
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case 'a': out += '\a'; break;
      case 'x': append_utf8(out, hex(2), line); break;
      case 'u': append_utf8(out, hex(4), line); break;
      case 'U': append_utf8(out, hex(8), line); break;
      case 'N': fail(line, "\\N{...} escapes in string literals are not supported");
      default:
        if (e >= '0' && e <= '7') {
          uint32_t cp = static_cast<uint32_t>(e - '0');
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k) {
            cp = cp * 8 + static_cast<uint32_t>(body[++i] - '0');
          }
          append_utf8(out, cp, line);
        } else {
          out += '\\';  // Python keeps unknown escapes as they are
          out += e;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(const std::string& source) : src_(normalize_newlines(source)) {}

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      size_t tag = find_tag_start(pos_);
      std::string text = src_.substr(pos_, tag - pos_);
      size_t text_start = pos_;
      if (strip_next_text_) {
        std::string stripped = python_strip(text, nullptr, true, false);
        text_start += text.size() - stripped.size();
        text = std::move(stripped);
        strip_next_text_ = false;
      }
      if (tag == src_.size()) {
        emit_text(text);
        break;
      }
      char kind = src_[tag + 1];
      char modifier = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      if (modifier == '-') {
        text = python_strip(text, nullptr, false, true);
      } else if (modifier != '+' && kind != '{') {
        text = lstrip_block_line(text, text_start);
      }
      emit_text(text);
      advance_lines(pos_, tag);  // line numbers count the source, whitespace control aside
      pos_ = tag + 2 + ((modifier == '-' || modifier == '+') ? 1 : 0);
      if (kind == '#') {
        lex_comment();
      } else if (kind == '%' && try_lex_raw()) {
        // raw block emitted as text
      } else {
        lex_tag(kind == '{');
      }
    }
    tokens_.push_back({TokenType::End, "", line_});
    return std::move(tokens_);
  }

 private:
  size_t find_tag_start(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return src_.size();
  }

  // lstrip_blocks: drop the spaces before a block tag when nothing else precedes it on its line.
  std::string lstrip_block_line(const std::string& text, size_t text_start) const {
    size_t nl = text.rfind('\n');
    size_t line_begin = nl == std::string::npos ? 0 : nl + 1;
    bool line_starting = line_begin > 0 || text_start == 0 || src_[text_start - 1] == '\n';
    if (!line_starting) return text;
    std::string tail = text.substr(line_begin);
    if (!python_strip(tail, nullptr, true, false).empty()) return text;
    return text.substr(0, line_begin);
  }

  void emit_text(const std::string& text) {
    if (!text.empty()) tokens_.push_back({TokenType::Text, text, line_});
  }

  void advance_lines(size_t from, size_t to) {
    for (size_t i = from; i < to && i < src_.size(); ++i) {
      if (src_[i] == '\n') ++line_;
    }
  }

  // After "%}" or "#}": trim_blocks drops one newline; "-%}" drops all following whitespace.
  void after_tag_end(char modifier) {
    if (modifier == '-') {
      strip_next_text_ = true;
    } else if (modifier != '+' && pos_ < src_.size() && src_[pos_] == '\n') {
      advance_lines(pos_, pos_ + 1);
      ++pos_;
    }
  }

  void lex_comment() {
    int start_line = line_;
    size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) fail(start_line, "unterminated comment '{#'");
    char modifier = end > pos_ && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : '\0';
    advance_lines(pos_, end + 2);
    pos_ = end + 2;
    after_tag_end(modifier);
  }

  // {% raw %}...{% endraw %}: the body is text, tags inside it are not interpreted.
  bool try_lex_raw() {
    size_t p = pos_;
    while (p < src_.size() && std::isspace(static_cast<unsigned char>(src_[p]))) ++p;
    if (src_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < src_.size() && std::isspace(static_cast<unsigned char>(src_[p]))) ++p;
    char open_modifier = '\0';
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) open_modifier = src_[p++];
    if (src_.compare(p, 2, "%}") != 0) return false;
    int start_line = line_;
    advance_lines(pos_, p + 2);
    pos_ = p + 2;
    after_tag_end(open_modifier);
    size_t body_start = pos_;
    // Find "{%[-+]? *endraw *[-+]?%}".
    for (size_t q = src_.find("{%", body_start); q != std::string::npos; q = src_.find("{%", q + 2)) {
      size_t r = q + 2;
      char close_pre = '\0';
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) close_pre = src_[r++];
      while (r < src_.size() && std::isspace(static_cast<unsigned char>(src_[r]))) ++r;
      if (src_.compare(r, 6, "endraw") != 0) continue;
      r += 6;
      while (r < src_.size() && std::isspace(static_cast<unsigned char>(src_[r]))) ++r;
      char close_post = '\0';
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) close_post = src_[r++];
      if (src_.compare(r, 2, "%}") != 0) continue;
      std::string body = src_.substr(body_start, q - body_start);
      if (strip_next_text_) {
        body = python_strip(body, nullptr, true, false);
        strip_next_text_ = false;
      }
      if (close_pre == '-') body = python_strip(body, nullptr, false, true);
      if (!body.empty()) tokens_.push_back({TokenType::Text, body, line_});
      advance_lines(pos_, r + 2);
      pos_ = r + 2;
      after_tag_end(close_post);
      return true;
    }
    fail(start_line, "'{% raw %}' without '{% endraw %}'");
  }

  void lex_tag(bool is_variable) {
    tokens_.push_back({is_variable ? TokenType::VarBegin : TokenType::BlockBegin, "", line_});
    int depth = 0;  // brackets open inside the tag: "}}" in {{ {'a': {'b': 1}} }} is not the end
    bool after_dot = false;
    while (true) {
      while (pos_ < src_.size() && std::isspace(static_cast<unsigned char>(src_[pos_]))) {
        advance_lines(pos_, pos_ + 1);
        ++pos_;
      }
      if (pos_ >= src_.size()) {
        fail(line_, std::string("unterminated tag, expected '") + (is_variable ? "}}" : "%}") + "'");
      }
      const char* end_mark = is_variable ? "}}" : "%}";
      if (depth == 0) {
        char modifier = '\0';
        size_t p = pos_;
        if ((src_[p] == '-' || src_[p] == '+') && src_.compare(p + 1, 2, end_mark) == 0) modifier = src_[p++];
        if (src_.compare(p, 2, end_mark) == 0) {
          tokens_.push_back({is_variable ? TokenType::VarEnd : TokenType::BlockEnd, "", line_});
          pos_ = p + 2;
          if (is_variable) {
            if (modifier == '-') strip_next_text_ = true;
          } else {
            after_tag_end(modifier);
          }
          return;
        }
      }
      char c = src_[pos_];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t start = pos_;
        while (pos_ < src_.size() &&
               (std::isalnum(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_')) {
          ++pos_;
        }
        tokens_.push_back({TokenType::Name, src_.substr(start, pos_ - start), line_});
        after_dot = false;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_number(after_dot);
        after_dot = false;
      } else if (c == '\'' || c == '"') {
        lex_string(c);
        after_dot = false;
      } else {
        lex_operator(depth);
        after_dot = tokens_.back().text == ".";
      }
    }
  }

  void lex_number(bool after_dot) {
    size_t start = pos_;
    auto digits = [&] {
      while (pos_ < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[pos_])) ||
                                    (src_[pos_] == '_' && pos_ + 1 < src_.size() &&
                                     std::isdigit(static_cast<unsigned char>(src_[pos_ + 1]))))) {
        ++pos_;
      }
    };
    digits();
    bool is_float = false;
    // "foo.0.1" is item 0 then item 1, not the float 0.1.
    if (!after_dot && pos_ + 1 < src_.size() && src_[pos_] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[pos_ + 1]))) {
      ++pos_;
      digits();
      is_float = true;
    }
    if (!after_dot && pos_ < src_.size() && (src_[pos_] == 'e' || src_[pos_] == 'E')) {
      size_t p = pos_ + 1;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < src_.size() && std::isdigit(static_cast<unsigned char>(src_[p]))) {
        pos_ = p;
        digits();
        is_float = true;
      }
    }
    std::string text;
    for (size_t i = start; i < pos_; ++i) {
      if (src_[i] != '_') text += src_[i];
    }
    tokens_.push_back({is_float ? TokenType::Float : TokenType::Integer, text, line_});
  }

  void lex_string(char quote) {
    int start_line = line_;
    size_t p = pos_ + 1;
    std::string body;
    while (true) {
      if (p >= src_.size()) fail(start_line, "unterminated string literal");
      char c = src_[p];
      if (c == '\\' && p + 1 < src_.size()) {
        body += c;
        body += src_[p + 1];
        p += 2;
        continue;
      }
      if (c == quote) break;
      body += c;
      ++p;
    }
    advance_lines(pos_, p + 1);
    pos_ = p + 1;
    tokens_.push_back({TokenType::String, decode_string_literal(body, start_line), start_line});
  }

  void lex_operator(int& depth) {
    static const char* const kTwoChar[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : kTwoChar) {
      if (src_.compare(pos_, 2, op) == 0) {
        tokens_.push_back({TokenType::Operator, op, line_});
        pos_ += 2;
        return;
      }
    }
    char c = src_[pos_];
    if (!std::strchr("+-*/%~<>=.,:|()[]{}", c)) {
      fail(line_, std::string("unexpected character '") + c + "' in tag");
    }
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') {
      if (depth == 0) fail(line_, std::string("unbalanced '") + c + "'");
      --depth;
    }
    tokens_.push_back({TokenType::Operator, std::string(1, c), line_});
    ++pos_;
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool strip_next_text_ = false;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(const std::string& source) { return Lexer(source).run(); }

}  // namespace fh1::jinja
