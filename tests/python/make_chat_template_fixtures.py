#!/usr/bin/env python3
"""Renders chat templates with Python's jinja2 the way transformers' apply_chat_template does,
and saves template + inputs + expected output as JSON fixtures for tests/chat.

The environment matches transformers/utils/chat_template_utils.py (_compile_jinja_template):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]),
a tojson filter that is json.dumps(ensure_ascii=False) without HTML escaping, and the globals
raise_exception, strftime_now, dict and namespace. render() gets messages, tools (None unless
given), documents (None), add_generation_prompt, bos_token, eos_token and any extra variables.
When transformers is installed, every rendering is also checked against its render_jinja_template.

Usage: python3 tests/python/make_chat_template_fixtures.py   (writes tests/fixtures/chat/*.json)
"""
import json
import pathlib
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures" / "chat"
TEMPLATES = FIXTURES / "templates"


def make_environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = dict
    env.globals["namespace"] = jinja2.utils.Namespace
    return env


ENV = make_environment()

try:  # cross-check against the real thing when it is available
    from transformers.utils.chat_template_utils import render_jinja_template
except Exception:  # noqa: BLE001
    render_jinja_template = None


def render(template, messages, add_generation_prompt, bos, eos, extra):
    variables = {"tools": None, "documents": None, "bos_token": bos, "eos_token": eos}
    variables.update(extra)
    variables["messages"] = messages
    variables["add_generation_prompt"] = add_generation_prompt
    out = ENV.from_string(template).render(**variables)
    if render_jinja_template is not None:
        kwargs = {k: v for k, v in extra.items() if k not in ("tools", "documents")}
        hf, _ = render_jinja_template(
            conversations=[messages], tools=extra.get("tools"), documents=extra.get("documents"),
            chat_template=template, add_generation_prompt=add_generation_prompt,
            bos_token=bos, eos_token=eos, **kwargs)
        assert hf[0] == out, "transformers renders differently"
    return out


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city. Answers in °C.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Abu Dhabi\""},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {"name": "search", "description": "Search the web", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}},
}

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "system_and_user": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "multi_turn": [
        {"role": "system", "content": "You are Falcon."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke.\nMake it short."},
        {"role": "assistant", "content": "Why did the falcon cross the road?"},
        {"role": "user", "content": "Why?"},
    ],
    "no_system_multi_turn": [
        {"role": "user", "content": "Ping"},
        {"role": "assistant", "content": "Pong"},
        {"role": "user", "content": "Again"},
    ],
    "unicode": [
        {"role": "user", "content": "héllo wörld — 你好, 世界 🦅 Привет! straße \u00a0nbsp\u3000"},
        {"role": "assistant", "content": "مرحبا 👋 ελληνικά"},
        {"role": "user", "content": "日本語で答えて"},
    ],
    "jinja_looking_content": [
        {"role": "user", "content": "Render {{ x }} and {% if y %}z{% endif %} and {# c #} literally"},
        {"role": "assistant", "content": "'quotes' \"double\" \\backslash {{ messages }}"},
        {"role": "user", "content": "{%- raw -%} endraw {{-"},
    ],
    "whitespace_content": [
        {"role": "system", "content": "  padded system \n"},
        {"role": "user", "content": "\n\n  lots of   space \r\n\r\n end  \t"},
        {"role": "assistant", "content": "   "},
        {"role": "user", "content": ""},
    ],
    "reasoning_history": [
        {"role": "user", "content": "Solve x+1=2"},
        {"role": "assistant", "content": "<think>\nx = 2 - 1\n</think>\n\nx = 1"},
        {"role": "user", "content": "And x+2=5?"},
    ],
    "tool_calls": [
        {"role": "system", "content": "Use tools when needed."},
        {"role": "user", "content": "What's the weather in Abu Dhabi?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Abu Dhabi", "days": 2}}}]},
        {"role": "tool", "content": "{\"temperature\": 41, \"unit\": \"celsius\"}"},
        {"role": "assistant", "content": "It is 41 °C."},
        {"role": "user", "content": "Thanks"},
    ],
    "multiple_tool_results": [
        {"role": "user", "content": "Weather in two cities?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
        {"role": "tool", "content": "18"},
        {"role": "tool", "content": "25"},
    ],
}

TOOL_CONVERSATIONS = {"tool_calls", "multiple_tool_results"}

# Which templates get tools passed, beyond the tool conversations with tools=None.
TOOL_TEMPLATES = {"falcon_h1_instruct", "falcon_h1_0_5b_instruct", "falcon_h1r_reasoning",
                  "qwen2_5_instruct", "llama3_2_tools"}

# Template-specific extra variables (kept deterministic: no strftime_now date in the output).
EXTRA = {"llama3_2_tools": {"date_string": "26 Jul 2024"}}

TOKENS = {
    "llama3_instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama3_2_tools": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistral_instruct": ("<s>", "</s>"),
    "llama2_chat": ("<s>", "</s>"),
    "gemma_it": ("<bos>", "<eos>"),
    "falcon_h1_instruct": ("<|begin_of_text|>", "<|end_of_text|>"),
    "falcon_h1_0_5b_instruct": ("<|begin_of_text|>", "<|end_of_text|>"),
}

# A synthetic template that exercises the supported Jinja subset beyond what real templates use.
FEATURES_TEMPLATE = r"""{#- exercise the engine -#}
{%- macro render_role(role, upper=false) -%}
{{ role | upper if upper else role | capitalize }}
{%- endmacro -%}
{%- set ns = namespace(count=0, roles=[]) -%}
{%- for m in messages if m.role != 'system' -%}
  {%- set ns.count = ns.count + 1 -%}
  {%- set ns.roles = ns.roles + [m.role] -%}
  [{{ loop.index }}/{{ loop.length }} {{ loop.revindex }} {{ loop.first }} {{ loop.last }}] {{ render_role(m.role, upper=loop.first) }}: {{ m.content | trim | length }}
  {%- if loop.previtem is defined %} prev={{ loop.previtem.role }}{% endif %}
  {{ loop.cycle('odd', 'even') }}
{% else %}
no messages
{%- endfor %}
count={{ ns.count }} roles={{ ns.roles | join(',') }} unique={{ ns.roles | unique | list }}
{% set d = {'b': 1, 'a': [1, 2.5, none, true], 'c': {'x': 'y'}} -%}
{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %} keys={{ d.keys() | list }} get={{ d.get('zz', 'dflt') }}
tojson={{ d | tojson }} sorted={{ d | tojson(sort_keys=true) }} indented={{ d | tojson(indent=2) }}
{{ 'abcdef'[::-1] }} {{ 'abcdef'[1:4] }} {{ [1,2,3,4][-2:] }} {{ 'héllo'[1] }} {{ range(3) | list }} {{ range(1, 10, 3) | list }}
{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 8 }} {{ 1.5 + 1 }} {{ 'a' ~ 1 ~ none }} {{ 3 * 'ab' }}
{{ 1 < 2 < 3 }} {{ 'b' in 'abc' }} {{ 'x' not in ['y'] }} {{ none is none }} {{ 1 is number }} {{ 'a' is string }} {{ d is mapping }}
{{ undefined_var is defined }} {{ undefined_var | default('fallback') }} {{ '' | default('empty', true) }} [{{ undefined_var }}]
{{ 'Hello World'.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a b c'.split(' ', 1) }} {{ '  x  '.strip() }}|{{ 'xxhixx'.strip('x') }}
{{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('lo', 'x')) }} {{ 'hello world'.title() }} {{ 'hello'.upper() }} {{ 'ÉCOLE straße'.lower() }}
{{ 'a-b'.replace('-', '+') }} {{ '{} and {}'.format('x', 1) }} {{ 'hello world' | title }} {{ 'HELLO' | lower | capitalize }}
{{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ [3, 1, 2] | sort(reverse=true) | first }} {{ [1, 2, 3] | last }} {{ [1, 2] | reverse | list }}
{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='role') | list }} {{ messages | rejectattr('role', 'eq', 'user') | list | length }}
{{ [1, 0, 2, none] | select | list }} {{ ['a', 'B'] | map('upper') | join('-') }} {{ '42' | int + 1 }} {{ '4.7' | int }} {{ 'x' | int(7) }} {{ '2.5' | float }}
{{ 'a\nb\n\nc' | indent(2) }} {{ '<&>' | escape }} {{ -3 | abs }} {{ 'abc' | list }} {{ {'k': 'v'} | items | list }}
{{ 'yes' if ns.count > 1 else 'no' }} {{ 'missing else' if false }}|{{ (1, 2) }} {{ [1, [2, 'x']] }} {{ 'it\'s' }}
{%- for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 4 %}{% break %}{% endif %}{{ i }}{% endfor %}
{% set captured %}inner {{ 1 + 1 }}{% endset %}{{ captured | upper }}
{% filter upper %}filtered {{ 'text' }}{% endfilter %}
{% raw %}{{ not rendered }} {% if %}{% endraw %}
{% if messages | length > 100 %}big{% elif messages | length > 1 %}several{% else %}one{% endif %}
  {% if true %}
    lstrip and trim
  {% endif %}
{{- ' done' -}}
"""


def load_templates():
    templates = {p.stem: p.read_text() for p in sorted(TEMPLATES.glob("*.jinja"))}
    templates["features"] = FEATURES_TEMPLATE
    return templates


def main():
    FIXTURES.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, template in load_templates().items():
        bos, eos = TOKENS.get(name, ("<s>", "</s>"))
        cases = []
        for conv_name, messages in CONVERSATIONS.items():
            tool_options = [None]
            if name in TOOL_TEMPLATES:
                tool_options.append([WEATHER_TOOL, SEARCH_TOOL])
            for tools in tool_options:
                if conv_name in TOOL_CONVERSATIONS and tools is None and name not in TOOL_TEMPLATES:
                    pass  # still rendered: shows how plain templates treat tool messages
                for add_generation_prompt in (False, True):
                    extra = dict(EXTRA.get(name, {}))
                    if tools is not None:
                        extra["tools"] = tools
                    case = {
                        "name": f"{conv_name}{'_tools' if tools else ''}_{'gen' if add_generation_prompt else 'nogen'}",
                        "messages": messages,
                        "add_generation_prompt": add_generation_prompt,
                        "extra": extra,
                    }
                    try:
                        case["expected"] = render(template, messages, add_generation_prompt, bos, eos, extra)
                    except jinja2.exceptions.TemplateError as e:  # raise_exception and undefined errors
                        case["expected_error"] = str(e)
                        case["error_type"] = type(e).__name__
                    except TypeError as e:  # e.g. str + None in a template that assumes content
                        case["expected_error"] = str(e)
                        case["error_type"] = type(e).__name__
                    cases.append(case)
        fixture = {"name": name, "template": template, "bos_token": bos, "eos_token": eos, "cases": cases}
        (FIXTURES / f"{name}.json").write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
        total += len(cases)
        errors = sum("expected_error" in c for c in cases)
        print(f"{name}: {len(cases)} cases ({errors} expect an error)")
    print(f"{total} cases in {FIXTURES}")


if __name__ == "__main__":
    main()
