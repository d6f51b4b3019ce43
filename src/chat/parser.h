// Builds the statement tree from tokens, with Jinja 3.1's operator precedence.
#pragma once

#include <string>
#include <vector>

#include "chat/ast.h"
#include "chat/lexer.h"

namespace fh1::jinja {

// The name the body of {% filter %} is bound to while its filters run; a template cannot spell it.
inline constexpr const char* kFilterBlockInput = "\x01filter-block";

// Throws fh1::Error naming the line and the construct on syntax errors and on Jinja features
// outside the supported subset (extends, include, import, call blocks, ...).
Body parse(const std::vector<Token>& tokens);

}  // namespace fh1::jinja
