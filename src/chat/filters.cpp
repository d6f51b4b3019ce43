// Jinja's filters ({{ x | trim }}) and tests ({% if x is defined %}), following
// jinja2/filters.py and jinja2/tests.py, with transformers' tojson (json.dumps, no HTML escaping).
#include <algorithm>
#include <cmath>
#include <map>

#include "chat/builtins.h"
#include "util/error.h"

namespace fh1::jinja {
namespace {

using FilterFn = Value (*)(const Value& input, const CallArgs& args);
using TestFn = bool (*)(const Value& input, const CallArgs& args);

// Python's str.splitlines() boundaries, which Jinja's indent filter uses.
std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> lines;
  std::string current;
  auto cps = split_code_points(s);
  for (size_t i = 0; i < cps.size(); ++i) {
    std::string_view c = cps[i];
    static const char* const kBreaks[] = {"\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\u0085", "\u2028", "\u2029"};
    bool is_break = std::any_of(std::begin(kBreaks), std::end(kBreaks), [&](const char* b) { return c == b; });
    if (!is_break) {
      current += c;
      continue;
    }
    if (c == "\r" && i + 1 < cps.size() && cps[i + 1] == "\n") ++i;
    lines.push_back(std::move(current));
    current.clear();
  }
  if (!current.empty()) lines.push_back(std::move(current));
  return lines;
}

// Jinja's make_attrgetter: "a.b.0" walks items (and attributes), numbers index lists.
Value get_path(const Value& item, const std::string& path) {
  Value v = item;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
    v = get_item(v, numeric ? Value(static_cast<int64_t>(std::stoll(part))) : Value(part));
    if (dot == std::string::npos) return v;
    start = dot + 1;
  }
}

CallArgs rest_args(const CallArgs& args, size_t skip) {
  CallArgs rest;
  rest.positional.assign(args.positional.begin() + static_cast<std::ptrdiff_t>(std::min(skip, args.positional.size())),
                         args.positional.end());
  rest.keyword = args.keyword;
  return rest;
}

// select/reject/selectattr/rejectattr share this: keep items whose (attribute) passes the test.
Value select_items(const Value& input, const CallArgs& args, bool by_attribute, bool keep_when) {
  size_t next = 0;
  std::string attribute;
  if (by_attribute) {
    if (args.positional.empty() || !args.positional[0].is_string()) throw Error("selectattr/rejectattr need an attribute name");
    attribute = args.positional[0].as_string();
    next = 1;
  }
  std::string test;
  if (args.positional.size() > next) {
    if (!args.positional[next].is_string()) throw Error("select: the test must be given by name");
    test = args.positional[next].as_string();
    if (!is_known_test(test)) throw Error("no test named '" + test + "'");
    ++next;
  }
  CallArgs test_args = rest_args(args, next);
  List out;
  for (const Value& item : iterate(input)) {
    Value subject = by_attribute ? get_path(item, attribute) : item;
    bool passed = test.empty() ? truthy(subject) : apply_test(test, subject, test_args);
    if (passed == keep_when) out.push_back(item);
  }
  return Value(std::move(out));
}

Value filter_map(const Value& input, const CallArgs& args) {
  List out;
  if (args.positional.empty()) {
    const Value* attribute = nullptr;
    const Value* fallback = nullptr;
    for (const auto& [k, v] : args.keyword) {
      if (k == "attribute") attribute = &v;
      else if (k == "default") fallback = &v;
      else throw Error("map() got an unexpected keyword argument '" + k + "'");
    }
    if (!attribute || !attribute->is_string()) throw Error("map() needs a filter name or attribute=");
    for (const Value& item : iterate(input)) {
      Value v = get_path(item, attribute->as_string());
      out.push_back(v.is_undefined() && fallback ? *fallback : v);
    }
    return Value(std::move(out));
  }
  if (!args.positional[0].is_string()) throw Error("map(): the filter must be given by name");
  const std::string& filter = args.positional[0].as_string();
  if (!is_known_filter(filter)) throw Error("no filter named '" + filter + "'");
  CallArgs filter_args = rest_args(args, 1);
  for (const Value& item : iterate(input)) out.push_back(apply_filter(filter, item, filter_args));
  return Value(std::move(out));
}

Value sort_key(const Value& v, bool case_sensitive, const std::string& attribute) {
  Value key = attribute.empty() ? v : get_path(v, attribute);
  if (!case_sensitive && key.is_string()) return Value(python_lower(key.as_string()));
  return key;
}

Value filter_sort(const Value& input, const CallArgs& args) {
  ArgReader a("sort", args, {"reverse", "case_sensitive", "attribute"});
  bool reverse = truthy(a.get(0)), case_sensitive = truthy(a.get(1));
  std::string attribute = a.has(2) ? to_str(a.get(2)) : "";
  List items = iterate(input);
  std::vector<std::pair<Value, Value>> keyed;
  for (const Value& item : items) keyed.emplace_back(sort_key(item, case_sensitive, attribute), item);
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    return reverse ? less(y.first, x.first) : less(x.first, y.first);
  });
  List out;
  for (auto& [key, item] : keyed) out.push_back(std::move(item));
  return Value(std::move(out));
}

Value filter_unique(const Value& input, const CallArgs& args) {
  ArgReader a("unique", args, {"case_sensitive", "attribute"});
  std::string attribute = a.has(1) ? to_str(a.get(1)) : "";
  List seen, out;
  for (const Value& item : iterate(input)) {
    Value key = sort_key(item, truthy(a.get(0)), attribute);
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equal(s, key); })) {
      seen.push_back(key);
      out.push_back(item);
    }
  }
  return Value(std::move(out));
}

Value filter_tojson(const Value& input, const CallArgs& args) {
  ArgReader a("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"});
  if (truthy(a.get(0))) throw Error("tojson(ensure_ascii=True) is not supported");
  JsonDumpOptions opt;
  const Value& indent = a.get(1);
  if (indent.is_int()) {
    opt.has_indent = true;
    opt.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, indent.as_int())), ' ');
  } else if (indent.is_string()) {
    opt.has_indent = true;
    opt.indent = indent.as_string();
  } else if (!indent.is_undefined() && !indent.is_none()) {
    throw Error("tojson(): indent must be an int or a string");
  }
  const Value& separators = a.get(2);
  if (separators.is_list()) {
    const List& pair = separators.as_list();
    if (pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string()) {
      throw Error("tojson(): separators must be a pair of strings");
    }
    opt.has_separators = true;
    opt.item_separator = pair[0].as_string();
    opt.key_separator = pair[1].as_string();
  }
  opt.sort_keys = truthy(a.get(3));
  return Value(to_json(input, opt));
}

Value filter_int(const Value& input, const CallArgs& args) {
  ArgReader a("int", args, {"default", "base"});
  Value fallback = a.get_or(0, Value(0));
  if (a.has(1) && a.get(1).as_int() != 10) throw Error("int(): only base 10 is supported");
  if (input.is_int() || input.is_bool()) return Value(input.as_int());
  if (input.is_float()) {
    double d = input.as_double();
    if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return fallback;
    return Value(static_cast<int64_t>(d));
  }
  if (!input.is_string()) return fallback;
  std::string s = python_strip(input.as_string(), nullptr, true, true);
  std::string digits;
  for (char c : s) {
    if (c != '_') digits += c;
  }
  size_t used = 0;
  try {
    int64_t i = std::stoll(digits, &used);
    if (used == digits.size() && !digits.empty()) return Value(i);
  } catch (const std::exception&) {
  }
  try {
    double d = std::stod(digits, &used);
    if (used == digits.size() && std::isfinite(d) && std::fabs(d) < 9.2e18) return Value(static_cast<int64_t>(d));
  } catch (const std::exception&) {
  }
  return fallback;
}

Value filter_float(const Value& input, const CallArgs& args) {
  ArgReader a("float", args, {"default"});
  if (input.is_number()) return Value(input.as_double());
  if (input.is_string()) {
    std::string s = python_strip(input.as_string(), nullptr, true, true);
    try {
      size_t used = 0;
      double d = std::stod(s, &used);
      if (used == s.size()) return Value(d);
    } catch (const std::exception&) {
    }
  }
  return a.get_or(0, Value(0.0));
}

Value filter_title(const Value& input, const CallArgs& args) {
  ArgReader("title", args, {});
  // Jinja splits before runs of "-", whitespace, "(", "{", "[", "<" and capitalizes each piece.
  auto is_separator = [](std::string_view c) {
    return c == "-" || c == "(" || c == "{" || c == "[" || c == "<" || is_python_whitespace(c);
  };
  std::string out;
  const std::string text = to_str(input);  // outlives the views into it
  auto cps = split_code_points(text);
  for (size_t i = 0; i < cps.size();) {
    size_t j = i;
    bool separator_run = is_separator(cps[i]);
    while (j < cps.size() && is_separator(cps[j]) == separator_run) ++j;
    std::string first(cps[i]), rest;
    for (size_t k = i + 1; k < j; ++k) rest += cps[k];
    out += python_upper(first) + python_lower(rest);
    i = j;
  }
  return Value(out);
}

Value filter_indent(const Value& input, const CallArgs& args) {
  ArgReader a("indent", args, {"width", "first", "blank"});
  const Value& width = a.get(0);
  std::string indention = width.is_string() ? width.as_string()
                                            : std::string(static_cast<size_t>(a.get_or(0, Value(4)).as_int()), ' ');
  std::vector<std::string> lines = split_lines(to_str(input) + "\n");
  std::string rv;
  if (truthy(a.get(2))) {
    for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + indention : "") + lines[i];
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) {
      rv += '\n';
      if (!lines[i].empty()) rv += indention + lines[i];
    }
  }
  if (truthy(a.get(1))) rv = indention + rv;
  return Value(rv);
}

Value filter_escape(const Value& input, const CallArgs& args) {
  ArgReader("escape", args, {});
  std::string out;
  for (char c : to_str(input)) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return Value(out);
}

Value filter_length(const Value& input, const CallArgs& args) {
  ArgReader("length", args, {});
  switch (input.kind()) {
    case Value::Kind::Undefined: return Value(0);
    case Value::Kind::String: return Value(static_cast<int64_t>(count_code_points(input.as_string())));
    case Value::Kind::List: return Value(static_cast<int64_t>(input.as_list().size()));
    case Value::Kind::Map: return Value(static_cast<int64_t>(input.as_map().entries.size()));
    default: throw Error("object of type '" + input.type_name() + "' has no len()");
  }
}

const std::map<std::string, FilterFn>& filters() {
  static const std::map<std::string, FilterFn> table = {
      {"trim", [](const Value& v, const CallArgs& args) {
         ArgReader a("trim", args, {"chars"});
         if (a.get(0).is_string()) return Value(python_strip(to_str(v), &a.get(0).as_string(), true, true));
         return Value(python_strip(to_str(v), nullptr, true, true));
       }},
      {"upper", [](const Value& v, const CallArgs& args) { ArgReader("upper", args, {}); return Value(python_upper(to_str(v))); }},
      {"lower", [](const Value& v, const CallArgs& args) { ArgReader("lower", args, {}); return Value(python_lower(to_str(v))); }},
      {"capitalize", [](const Value& v, const CallArgs& args) {
         ArgReader("capitalize", args, {});
         return Value(python_capitalize(to_str(v)));
       }},
      {"title", filter_title},
      {"length", filter_length},
      {"count", filter_length},
      {"tojson", filter_tojson},
      {"string", [](const Value& v, const CallArgs& args) { ArgReader("string", args, {}); return Value(to_str(v)); }},
      {"safe", [](const Value& v, const CallArgs& args) { ArgReader("safe", args, {}); return v; }},
      {"int", filter_int},
      {"float", filter_float},
      {"default", [](const Value& v, const CallArgs& args) {
         ArgReader a("default", args, {"default_value", "boolean"});
         bool use_default = v.is_undefined() || (truthy(a.get(1)) && !truthy(v));
         return use_default ? a.get_or(0, Value("")) : v;
       }},
      {"join", [](const Value& v, const CallArgs& args) {
         ArgReader a("join", args, {"d", "attribute"});
         std::string sep = a.has(0) ? to_str(a.get(0)) : "", out;
         bool first = true;
         for (const Value& item : iterate(v)) {
           if (!first) out += sep;
           first = false;
           out += to_str(a.has(1) ? get_path(item, to_str(a.get(1))) : item);
         }
         return Value(out);
       }},
      {"first", [](const Value& v, const CallArgs& args) {
         ArgReader("first", args, {});
         List items = iterate(v);
         return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
       }},
      {"last", [](const Value& v, const CallArgs& args) {
         ArgReader("last", args, {});
         List items = iterate(v);
         return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
       }},
      {"items", [](const Value& v, const CallArgs& args) {
         ArgReader("items", args, {});
         if (v.is_undefined()) return Value(List{});
         if (!v.is_map()) throw Error("items(): can only get item pairs from a mapping, not " + v.type_name());
         List out;
         for (const auto& [k, item] : v.as_map().entries) out.push_back(Value::tuple({Value(k), item}));
         return Value(std::move(out));
       }},
      {"replace", [](const Value& v, const CallArgs& args) {
         ArgReader a("replace", args, {"old", "new", "count"});
         int64_t count = a.get(2).is_undefined() || a.get(2).is_none() ? -1 : a.get(2).as_int();
         return Value(python_replace(to_str(v), to_str(a.get(0)), to_str(a.get(1)), count));
       }},
      {"list", [](const Value& v, const CallArgs& args) { ArgReader("list", args, {}); return Value(iterate(v)); }},
      {"select", [](const Value& v, const CallArgs& args) { return select_items(v, args, false, true); }},
      {"reject", [](const Value& v, const CallArgs& args) { return select_items(v, args, false, false); }},
      {"selectattr", [](const Value& v, const CallArgs& args) { return select_items(v, args, true, true); }},
      {"rejectattr", [](const Value& v, const CallArgs& args) { return select_items(v, args, true, false); }},
      {"map", filter_map},
      {"reverse", [](const Value& v, const CallArgs& args) {
         ArgReader("reverse", args, {});
         if (v.is_string()) {
           auto cps = split_code_points(v.as_string());
           std::string out;
           for (auto it = cps.rbegin(); it != cps.rend(); ++it) out += *it;
           return Value(out);
         }
         List items = iterate(v);
         std::reverse(items.begin(), items.end());
         return Value(std::move(items));
       }},
      {"sort", filter_sort},
      {"unique", filter_unique},
      {"abs", [](const Value& v, const CallArgs& args) {
         ArgReader("abs", args, {});
         if (v.is_float()) return Value(std::fabs(v.as_double()));
         if (v.is_int() || v.is_bool()) return v.as_int() < 0 ? unary_minus(v) : Value(v.as_int());
         throw Error("bad operand type for abs(): '" + v.type_name() + "'");
       }},
      {"escape", filter_escape},
      {"e", filter_escape},
      {"indent", filter_indent},
      {"attr", [](const Value& v, const CallArgs& args) {
         ArgReader a("attr", args, {"name"});
         return get_attribute(v, to_str(a.get(0)));
       }},
  };
  return table;
}

bool compare_test(const Value& v, const CallArgs& args, const char* name, int which) {
  ArgReader a(name, args, {"other"});
  const Value& other = a.get(0);
  switch (which) {
    case 0: return equal(v, other);
    case 1: return !equal(v, other);
    case 2: return less(v, other);
    case 3: return !less(other, v);
    case 4: return less(other, v);
    default: return !less(v, other);
  }
}

const std::map<std::string, TestFn>& tests() {
  static const std::map<std::string, TestFn> table = {
      {"defined", [](const Value& v, const CallArgs&) { return !v.is_undefined(); }},
      {"undefined", [](const Value& v, const CallArgs&) { return v.is_undefined(); }},
      {"none", [](const Value& v, const CallArgs&) { return v.is_none(); }},
      {"string", [](const Value& v, const CallArgs&) { return v.is_string(); }},
      {"mapping", [](const Value& v, const CallArgs&) { return v.is_map(); }},
      {"sequence", [](const Value& v, const CallArgs&) { return v.is_string() || v.is_list() || v.is_map(); }},
      // Undefined iterates as empty, so Jinja calls it iterable.
      {"iterable", [](const Value& v, const CallArgs&) {
         return v.is_string() || v.is_list() || v.is_map() || v.is_undefined();
       }},
      {"number", [](const Value& v, const CallArgs&) { return v.is_number(); }},
      {"integer", [](const Value& v, const CallArgs&) { return v.is_int(); }},
      {"float", [](const Value& v, const CallArgs&) { return v.is_float(); }},
      {"boolean", [](const Value& v, const CallArgs&) { return v.is_bool(); }},
      {"true", [](const Value& v, const CallArgs&) { return v.is_bool() && v.as_bool(); }},
      {"false", [](const Value& v, const CallArgs&) { return v.is_bool() && !v.as_bool(); }},
      {"callable", [](const Value& v, const CallArgs&) { return v.is_function(); }},
      {"odd", [](const Value& v, const CallArgs&) { return (v.as_int() % 2) != 0; }},
      {"even", [](const Value& v, const CallArgs&) { return (v.as_int() % 2) == 0; }},
      {"divisibleby", [](const Value& v, const CallArgs& args) {
         ArgReader a("divisibleby", args, {"num"});
         if (a.get(0).as_int() == 0) throw Error("divisibleby 0");
         return v.as_int() % a.get(0).as_int() == 0;
       }},
      {"in", [](const Value& v, const CallArgs& args) {
         ArgReader a("in", args, {"seq"});
         return contains(a.get(0), v);
       }},
      {"sameas", [](const Value& v, const CallArgs& args) {
         ArgReader a("sameas", args, {"other"});
         const Value& o = a.get(0);
         if (v.is_none() || v.is_bool() || o.is_none() || o.is_bool()) return v.kind() == o.kind() && equal(v, o);
         throw Error("'sameas' is only supported for none, true and false");
       }},
      {"lower", [](const Value& v, const CallArgs&) {
         std::string s = to_str(v);
         return python_lower(s) == s && python_upper(s) != s;
       }},
      {"upper", [](const Value& v, const CallArgs&) {
         std::string s = to_str(v);
         return python_upper(s) == s && python_lower(s) != s;
       }},
      {"eq", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "eq", 0); }},
      {"equalto", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "equalto", 0); }},
      {"==", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "==", 0); }},
      {"ne", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "ne", 1); }},
      {"!=", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "!=", 1); }},
      {"lt", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "lt", 2); }},
      {"lessthan", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "lessthan", 2); }},
      {"<", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "<", 2); }},
      {"le", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "le", 3); }},
      {"<=", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "<=", 3); }},
      {"gt", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "gt", 4); }},
      {"greaterthan", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "greaterthan", 4); }},
      {">", [](const Value& v, const CallArgs& a) { return compare_test(v, a, ">", 4); }},
      {"ge", [](const Value& v, const CallArgs& a) { return compare_test(v, a, "ge", 5); }},
      {">=", [](const Value& v, const CallArgs& a) { return compare_test(v, a, ">=", 5); }},
  };
  return table;
}

}  // namespace

bool is_known_filter(const std::string& name) { return filters().count(name) != 0; }
bool is_known_test(const std::string& name) { return tests().count(name) != 0; }

Value apply_filter(const std::string& name, const Value& input, const CallArgs& args) {
  auto it = filters().find(name);
  if (it == filters().end()) throw Error("no filter named '" + name + "'");
  return it->second(input, args);
}

bool apply_test(const std::string& name, const Value& input, const CallArgs& args) {
  auto it = tests().find(name);
  if (it == tests().end()) throw Error("no test named '" + name + "'");
  if ((name == "odd" || name == "even" || name == "divisibleby") && !(input.is_int() || input.is_bool())) {
    throw Error("test '" + name + "' needs an integer, got " + input.type_name());
  }
  return it->second(input, args);
}

}  // namespace fh1::jinja
