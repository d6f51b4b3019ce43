// Walks the statement tree and produces text, with Jinja's scoping rules and hard limits so
// that hostile or broken templates (templates come from model repositories) end in an
// fh1::Error instead of a hang, a stack overflow or unbounded memory.
#pragma once

#include <cstdint>
#include <string>

#include "chat/ast.h"
#include "chat/value.h"

namespace fh1::jinja {

struct RenderLimits {
  size_t max_output_bytes = size_t{32} << 20;  // any one rendered string
  int max_depth = 400;                         // nested statements, expressions and macro calls
  uint64_t max_steps = 2'000'000;  // statements executed plus loop iterations; real chats need ~1e4
};

// Renders `body` with `variables` on top of the globals (range, namespace, ...).
std::string render_template(const Body& body, const Map& variables, const RenderLimits& limits);

// Checks every filter and test name, as Jinja does when it compiles a template.
void check_names(const Body& body);

}  // namespace fh1::jinja
