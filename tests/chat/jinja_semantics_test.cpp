// Small checks of Jinja/Python semantics that the fixtures do not pin down on their own.
// Expected strings were produced with Python's jinja2 3.1 in transformers' configuration.
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "chat/value.h"

namespace {

using nlohmann::ordered_json;

std::string render(const std::string& source, const ordered_json& extra = ordered_json::object()) {
  fh1::ChatTemplate tmpl(source);
  return tmpl.render(ordered_json::parse(R"([{"role": "user", "content": "Hi"}])"), false, "<s>", "</s>", extra);
}

TEST(JinjaSemantics, WhitespaceControl) {
  EXPECT_EQ(render("a  {# c #}  \n  {# d #}\nb"), "a    \nb");
  EXPECT_EQ(render("  {{ 1 }}\n  {% if true %}\n  x\n  {% endif %}\nend\n"), "  1\n  x\nend");
  EXPECT_EQ(render("a\n  {%- if true -%}  \n b {%+ if true %}c{% endif %}\n{% endif %}"), "ab c");
  EXPECT_EQ(render("x {{- ' y ' -}} z"), "x y z");
  EXPECT_EQ(render("{% raw %}{{ x }}{% endraw %}"), "{{ x }}");
  EXPECT_EQ(render("a\r\nb\rc"), "a\nb\nc");
}

TEST(JinjaSemantics, ForLoopScopes) {
  EXPECT_EQ(render("{% for i in range(3) %}{% if i == 1 %}{% set x = 5 %}{% endif %}[{{ x }}]{% endfor %}{{ x }}"),
            "[][5][]");
  EXPECT_EQ(render("{% set x = 1 %}{% for i in range(3) %}{% set x = x + 1 %}[{{ x }}]{% endfor %}{{ x }}"),
            "[2][2][2]1");
  EXPECT_EQ(render("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in [1,2] %}{{ loop.previtem }}{{ loop.nextitem }}{% endfor %}"), "21");
}

TEST(JinjaSemantics, PythonPrinting) {
  EXPECT_EQ(render("{{ [1,'a',none,true,1.5,{'k':[1]}] }}"), "[1, 'a', None, True, 1.5, {'k': [1]}]");
  EXPECT_EQ(render("{{ 1e20 }} {{ 1.0 }} {{ 0.1+0.2 }} {{ 1e-5 }} {{ 3/2 }} {{ 4/2 }}"),
            "1e+20 1.0 0.30000000000000004 1e-05 1.5 2.0");
  EXPECT_EQ(render("{{ \"it's\" }} {{ [\"it's\"] }}"), "it's [\"it's\"]");
  EXPECT_EQ(render("{{ u | length }}{{ u | trim }}|{{ u == none }}|{{ u is none }}"), "0|False|False");
}

TEST(JinjaSemantics, TransformersDefaults) {
  EXPECT_EQ(render("{{ tools is none }} {{ documents is defined }} {{ bos_token }}{{ eos_token }}"),
            "True True <s></s>");
  EXPECT_EQ(render("{{ tools | length }}", ordered_json::parse(R"({"tools": [{"a": 1}]})")), "1");
  EXPECT_EQ(render("{{ dict(a=1, b='x') | tojson }}"), "{\"a\": 1, \"b\": \"x\"}");
  EXPECT_EQ(render("{{ strftime_now('%Y') | length }}"), "4");
  EXPECT_EQ(render("{% generation %}kept{% endgeneration %}"), "kept");
}

TEST(JinjaSemantics, FloatFormatting) {
  using fh1::jinja::format_python_float;
  EXPECT_EQ(format_python_float(1e16), "1e+16");
  EXPECT_EQ(format_python_float(1e15), "1000000000000000.0");
  EXPECT_EQ(format_python_float(0.0001), "0.0001");
  EXPECT_EQ(format_python_float(-2.5e-7), "-2.5e-07");
  EXPECT_EQ(format_python_float(123.456), "123.456");
}

TEST(JinjaSemantics, ChatMlFallback) {
  fh1::ChatTemplate tmpl(fh1::chatml_template());
  auto messages = ordered_json::parse(R"([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])");
  EXPECT_EQ(tmpl.render(messages, true, "", ""),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
}

}  // namespace
