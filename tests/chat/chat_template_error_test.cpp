// Bad templates must end in an fh1::Error that names the problem and the line: syntax errors,
// constructs outside the supported subset, raise_exception, and runaway templates.
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "util/error.h"

namespace {

using nlohmann::ordered_json;

const ordered_json kMessages = ordered_json::parse(R"([{"role": "user", "content": "Hi"}])");

std::string render(const std::string& source, const ordered_json& extra = ordered_json::object()) {
  fh1::ChatTemplate tmpl(source);
  return tmpl.render(kMessages, true, "<s>", "</s>", extra);
}

// Runs `f`, expects fh1::Error, and returns its message.
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const fh1::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no fh1::Error thrown";
  return "";
}

void expect_construct_error(const std::string& source, const std::string& needle) {
  std::string message = error_of([&] { fh1::ChatTemplate t(source); });
  EXPECT_NE(message.find(needle), std::string::npos) << "message: " << message;
}

void expect_render_error(const std::string& source, const std::string& needle) {
  std::string message = error_of([&] { render(source); });
  EXPECT_NE(message.find(needle), std::string::npos) << "message: " << message;
}

TEST(ChatTemplateErrors, SyntaxErrorsNameTheLine) {
  expect_construct_error("{% if x %}\nunclosed", "'endif' for the block opened on line 1");
  expect_construct_error("line1\n{{ 1 + }}", "line 2");
  expect_construct_error("{{ 'unterminated }}", "unterminated string");
  expect_construct_error("{% for x in %}{% endfor %}", "expected an expression");
  expect_construct_error("{% endif %}", "unexpected 'endif'");
  expect_construct_error("{{ x ", "unterminated tag");
  expect_construct_error("{# never closed", "unterminated comment");
  expect_construct_error("{% if %}", "line 1");
  expect_construct_error("{{ a ) }}", "unbalanced");
  expect_construct_error("{% break %}", "outside of a for loop");
  expect_construct_error("{{ x $ y }}", "unexpected character");
}

TEST(ChatTemplateErrors, UnsupportedConstructsAreNamed) {
  expect_construct_error("{{ x | wordwrap }}", "no filter named 'wordwrap'");
  expect_construct_error("\n\n{{ x | groupby('a') }}", "line 3");
  expect_construct_error("{% if x is escaped %}{% endif %}", "no test named 'escaped'");
  expect_construct_error("{% include 'other.jinja' %}", "'{% include %}' is not supported");
  expect_construct_error("{% extends 'base' %}", "not supported");
  expect_construct_error("{% call m() %}x{% endcall %}", "'{% call %}' is not supported");
  expect_construct_error("{% for x in y recursive %}{% endfor %}", "recursive");
  expect_construct_error("{{ f(*args) }}", "*args");
  expect_construct_error("{% frobnicate %}", "unknown statement 'frobnicate'");
  expect_render_error("{{ '%s' % 'x' }}", "printf-style");
  expect_render_error("{{ 'ά' | upper }}", "case conversion");
  expect_render_error("{{ '{:>5}'.format(1) }}", "format specs");
}

TEST(ChatTemplateErrors, RaiseExceptionKeepsTheMessage) {
  std::string message = error_of([] { render("\n{{ raise_exception('Roles must alternate!') }}"); });
  EXPECT_NE(message.find("Roles must alternate!"), std::string::npos) << message;
  EXPECT_NE(message.find("line 2"), std::string::npos) << message;
}

TEST(ChatTemplateErrors, RuntimeTypeErrors) {
  expect_render_error("{{ undefined_thing.attr }}", "'undefined_thing' is undefined");
  expect_render_error("{{ messages[0].nope.deeper }}", "has no attribute 'nope'");
  expect_render_error("{{ 'a' + 1 }}", "can only concatenate str");
  expect_render_error("{{ 1 / 0 }}", "division by zero");
  expect_render_error("{{ none | tojson }}{{ x | tojson }}", "not JSON serializable");
  expect_render_error("{{ messages.append(1) }}", "unsafe");
  expect_render_error("{% for x in 5 %}{% endfor %}", "not iterable");
  expect_render_error("{% set a, b = [1] %}", "cannot unpack");
  expect_render_error("{{ 9223372036854775807 + 1 }}", "integer overflow");
  expect_render_error("{{ 1 < 'a' }}", "not supported between");
  expect_render_error("{% set x = 1 %}{% set x.y = 2 %}", "non-namespace");
  expect_render_error("{{ messages() }}", "not callable");
}

TEST(ChatTemplateErrors, RunawayTemplatesTerminate) {
  // Sandbox range limit, as in transformers.
  expect_render_error("{% for i in range(1000000) %}{% endfor %}", "Range too big");
  // Nested loops that would run 10^10 iterations hit the step limit.
  expect_render_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                      "steps");
  // Unbounded recursion hits the depth limit instead of overflowing the stack.
  expect_render_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "deeper than");
  // Output growth is capped.
  expect_render_error("{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                      "exceeds");
  expect_render_error("{{ 'x' * 10000000000 }}", "exceeds");
  // Deeply nested source is rejected by the parser, not by a crash.
  std::string deep;
  for (int i = 0; i < 5000; ++i) deep += "(";
  expect_construct_error("{{ " + deep + "1" + std::string(5000, ')') + " }}", "nested more than");
  std::string deep_ifs;
  for (int i = 0; i < 2000; ++i) deep_ifs += "{% if true %}";
  for (int i = 0; i < 2000; ++i) deep_ifs += "{% endif %}";
  expect_construct_error(deep_ifs, "nested more than");
}

TEST(ChatTemplateErrors, BadInputIsAnError) {
  fh1::ChatTemplate tmpl("{{ messages }}");
  EXPECT_THROW(tmpl.render(ordered_json::object(), false, "", ""), fh1::Error);
  EXPECT_THROW(tmpl.render(ordered_json::parse("[1]"), false, "", ""), fh1::Error);
}

}  // namespace
