// Splits a template into text and tag tokens, applying Jinja's whitespace rules the way
// transformers configures them: trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
// plus the per-tag controls {%- -%} {{- -}} {#- -#} and {%+ +%}.
#pragma once

#include <string>
#include <vector>

namespace fh1::jinja {

enum class TokenType {
  Text,        // literal template text, already whitespace-controlled
  VarBegin,    // {{
  VarEnd,      // }}
  BlockBegin,  // {%
  BlockEnd,    // %}
  Name,        // identifiers and keywords (if, for, and, not, true, ...)
  String,      // string literal, escapes already decoded
  Integer,
  Float,
  Operator,    // + - * / // % ** ~ == != < <= > >= = . , : | ( ) [ ] { }
  End,
};

struct Token {
  TokenType type;
  std::string text;  // the name, operator, decoded string, or number spelling
  int line;
};

// Throws fh1::Error (with the line) on an unterminated tag, comment or string.
std::vector<Token> tokenize(const std::string& source);

const char* token_type_name(TokenType type);

}  // namespace fh1::jinja
