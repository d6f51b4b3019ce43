// Methods of str/dict/list values (content.strip(), message.get('x'), ...) and the global
// functions transformers provides (raise_exception, strftime_now, namespace, dict) plus range.
#include <ctime>

#include "chat/builtins.h"
#include "util/error.h"

namespace fh1::jinja {
namespace {

using Method = std::function<Value(const Value& self, CallArgs& args)>;

const std::string& string_arg(const Value& v, const std::string& function, const char* what) {
  if (!v.is_string()) throw Error(function + "(): " + what + " must be str, not " + v.type_name());
  return v.as_string();
}

Value strip_method(const Value& self, CallArgs& args, const char* name, bool left, bool right) {
  ArgReader a(name, args, {"chars"});
  const Value& chars = a.get(0);
  if (chars.is_undefined() || chars.is_none()) return Value(python_strip(self.as_string(), nullptr, left, right));
  return Value(python_strip(self.as_string(), &string_arg(chars, name, "chars"), left, right));
}

Value affix_method(const Value& self, CallArgs& args, bool prefix) {
  const char* name = prefix ? "startswith" : "endswith";
  ArgReader a(name, args, {prefix ? "prefix" : "suffix"});
  const std::string& s = self.as_string();
  auto matches = [&](const Value& affix) {
    const std::string& x = string_arg(affix, name, "argument");
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  const Value& arg = a.get(0);
  if (arg.is_list()) {  // a tuple of alternatives
    for (const Value& alternative : arg.as_list()) {
      if (matches(alternative)) return Value(true);
    }
    return Value(false);
  }
  return Value(matches(arg));
}

// str.format with {} / {0} / {name} fields; format specs and conversions are not supported.
Value format_method(const Value& self, CallArgs& args) {
  const std::string& f = self.as_string();
  std::string out;
  size_t next_auto = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    char c = f[i];
    if (c == '}' ) {
      if (i + 1 < f.size() && f[i + 1] == '}') ++i;
      else throw Error("format(): single '}' encountered in format string");
      out += '}';
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < f.size() && f[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    size_t close = f.find('}', i);
    if (close == std::string::npos) throw Error("format(): single '{' encountered in format string");
    std::string field = f.substr(i + 1, close - i - 1);
    if (field.find_first_of(":!.[") != std::string::npos) {
      throw Error("format(): field '{" + field + "}' uses format specs or conversions, which are not supported");
    }
    const Value* v = nullptr;
    if (field.empty() || std::isdigit(static_cast<unsigned char>(field[0]))) {
      size_t index = field.empty() ? next_auto++ : std::stoul(field);
      if (index >= args.positional.size()) throw Error("format(): replacement index " + std::to_string(index) + " out of range");
      v = &args.positional[index];
    } else {
      for (const auto& [k, val] : args.keyword) {
        if (k == field) v = &val;
      }
      if (!v) throw Error("format(): missing keyword argument '" + field + "'");
    }
    out += to_str(*v);
    i = close;
  }
  return Value(std::move(out));
}

Value count_or_find(const Value& self, CallArgs& args, bool find) {
  const char* name = find ? "find" : "count";
  ArgReader a(name, args, {"sub"});
  const std::string& s = self.as_string();
  const std::string& sub = string_arg(a.get(0), name, "argument");
  if (find) {
    size_t hit = s.find(sub);
    return Value(hit == std::string::npos ? int64_t{-1} : static_cast<int64_t>(count_code_points(s.substr(0, hit))));
  }
  if (sub.empty()) return Value(static_cast<int64_t>(count_code_points(s) + 1));
  int64_t n = 0;
  for (size_t pos = s.find(sub); pos != std::string::npos; pos = s.find(sub, pos + sub.size())) ++n;
  return Value(n);
}

const std::vector<std::pair<std::string, Method>>& string_methods() {
  static const std::vector<std::pair<std::string, Method>> methods = {
      {"strip", [](const Value& s, CallArgs& a) { return strip_method(s, a, "strip", true, true); }},
      {"lstrip", [](const Value& s, CallArgs& a) { return strip_method(s, a, "lstrip", true, false); }},
      {"rstrip", [](const Value& s, CallArgs& a) { return strip_method(s, a, "rstrip", false, true); }},
      {"startswith", [](const Value& s, CallArgs& a) { return affix_method(s, a, true); }},
      {"endswith", [](const Value& s, CallArgs& a) { return affix_method(s, a, false); }},
      {"split", [](const Value& s, CallArgs& args) {
         ArgReader a("split", args, {"sep", "maxsplit"});
         return Value(python_split(s.as_string(), a.get(0), a.get_or(1, Value(-1)).as_int()));
       }},
      {"upper", [](const Value& s, CallArgs& args) { ArgReader("upper", args, {}); return Value(python_upper(s.as_string())); }},
      {"lower", [](const Value& s, CallArgs& args) { ArgReader("lower", args, {}); return Value(python_lower(s.as_string())); }},
      {"title", [](const Value& s, CallArgs& args) { ArgReader("title", args, {}); return Value(python_title(s.as_string())); }},
      {"capitalize", [](const Value& s, CallArgs& args) {
         ArgReader("capitalize", args, {});
         return Value(python_capitalize(s.as_string()));
       }},
      {"replace", [](const Value& s, CallArgs& args) {
         ArgReader a("replace", args, {"old", "new", "count"});
         return Value(python_replace(s.as_string(), string_arg(a.get(0), "replace", "old"),
                                     string_arg(a.get(1), "replace", "new"), a.get_or(2, Value(-1)).as_int()));
       }},
      {"format", format_method},
      {"join", [](const Value& s, CallArgs& args) {
         ArgReader a("join", args, {"iterable"});
         std::string out;
         bool first = true;
         for (const Value& item : iterate(a.get(0))) {
           if (!first) out += s.as_string();
           first = false;
           out += string_arg(item, "join", "sequence item");
         }
         return Value(std::move(out));
       }},
      {"find", [](const Value& s, CallArgs& a) { return count_or_find(s, a, true); }},
      {"count", [](const Value& s, CallArgs& a) { return count_or_find(s, a, false); }},
  };
  return methods;
}

const std::vector<std::pair<std::string, Method>>& dict_methods() {
  static const std::vector<std::pair<std::string, Method>> methods = {
      {"get", [](const Value& d, CallArgs& args) {
         ArgReader a("get", args, {"key", "default"});
         const Value& key = a.get(0);
         if (key.is_string()) {
           if (const Value* v = d.as_map().find(key.as_string())) return *v;
         }
         return a.get_or(1, Value::none());
       }},
      {"items", [](const Value& d, CallArgs& args) {
         ArgReader("items", args, {});
         List items;
         for (const auto& [k, v] : d.as_map().entries) items.push_back(Value::tuple({Value(k), v}));
         return Value(std::move(items));
       }},
      {"keys", [](const Value& d, CallArgs& args) {
         ArgReader("keys", args, {});
         return Value(iterate(d));
       }},
      {"values", [](const Value& d, CallArgs& args) {
         ArgReader("values", args, {});
         List values;
         for (const auto& entry : d.as_map().entries) values.push_back(entry.second);
         return Value(std::move(values));
       }},
  };
  return methods;
}

const std::vector<std::pair<std::string, Method>>& list_methods() {
  static const std::vector<std::pair<std::string, Method>> methods = {
      {"index", [](const Value& l, CallArgs& args) {
         ArgReader a("index", args, {"value"});
         const List& items = l.as_list();
         for (size_t i = 0; i < items.size(); ++i) {
           if (equal(items[i], a.get(0))) return Value(static_cast<int64_t>(i));
         }
         throw Error(to_repr(a.get(0)) + " is not in list");
       }},
      {"count", [](const Value& l, CallArgs& args) {
         ArgReader a("count", args, {"value"});
         int64_t n = 0;
         for (const Value& item : l.as_list()) n += equal(item, a.get(0));
         return Value(n);
       }},
  };
  return methods;
}

// Methods that would modify a value; the immutable sandbox that transformers uses refuses them.
bool is_mutating_method(const Value& v, const std::string& name) {
  static const char* const kList[] = {"append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse"};
  static const char* const kDict[] = {"pop", "popitem", "setdefault", "update", "clear"};
  if (v.is_list()) {
    for (const char* m : kList) if (name == m) return true;
  }
  if (v.is_map()) {
    for (const char* m : kDict) if (name == m) return true;
  }
  return false;
}

Value strftime_now(CallArgs& args) {
  ArgReader a("strftime_now", args, {"format"});
  const std::string& format = string_arg(a.get(0), "strftime_now", "format");
  std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  std::string buf(256 + format.size() * 16, '\0');
  size_t n = std::strftime(buf.data(), buf.size(), format.c_str(), &local);
  if (n == 0 && !format.empty()) throw Error("strftime_now(): format produced no output");
  buf.resize(n);
  return Value(buf);
}

// The sandbox's range(): more than 100000 items is an error in transformers too.
Value range_function(CallArgs& args) {
  constexpr int64_t kMaxRange = 100000;
  for (const Value& v : args.positional) {
    if (!v.is_int() && !v.is_bool()) throw Error("range(): '" + v.type_name() + "' object cannot be interpreted as an integer");
  }
  if (!args.keyword.empty()) throw Error("range() takes no keyword arguments");
  int64_t start = 0, stop = 0, step = 1;
  switch (args.positional.size()) {
    case 1: stop = args.positional[0].as_int(); break;
    case 2: start = args.positional[0].as_int(); stop = args.positional[1].as_int(); break;
    case 3:
      start = args.positional[0].as_int();
      stop = args.positional[1].as_int();
      step = args.positional[2].as_int();
      break;
    default: throw Error("range() expects 1 to 3 arguments, got " + std::to_string(args.positional.size()));
  }
  if (step == 0) throw Error("range() arg 3 must not be zero");
  __int128 span = step > 0 ? (__int128)stop - start : (__int128)start - stop;
  __int128 abs_step = step > 0 ? step : -(__int128)step;
  __int128 count = span <= 0 ? 0 : (span + abs_step - 1) / abs_step;
  if (count > kMaxRange) {
    throw Error("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
  }
  List items;
  for (__int128 i = 0; i < count; ++i) items.push_back(Value(static_cast<int64_t>(start + i * step)));
  return Value(std::move(items));
}

// namespace(...) and dict(...): an optional mapping plus keyword arguments.
Map map_from_args(const CallArgs& args, const char* function) {
  if (args.positional.size() > 1) throw Error(std::string(function) + "() takes at most 1 positional argument");
  Map map;
  if (!args.positional.empty()) {
    const Value& source = args.positional[0];
    if (source.is_map()) {
      map = source.as_map();
    } else if (source.is_namespace()) {
      map = source.namespace_attributes();
    } else {
      for (const Value& pair : iterate(source)) {
        if (!pair.is_list() || pair.as_list().size() != 2 || !pair.as_list()[0].is_string()) {
          throw Error(std::string(function) + "(): expected a mapping or (str key, value) pairs");
        }
        map.set(pair.as_list()[0].as_string(), pair.as_list()[1]);
      }
    }
  }
  for (const auto& [k, v] : args.keyword) map.set(k, v);
  return map;
}

}  // namespace

std::optional<Value> bound_method(const Value& object, const std::string& name) {
  const std::vector<std::pair<std::string, Method>>* table = nullptr;
  if (object.is_string()) table = &string_methods();
  else if (object.is_map()) table = &dict_methods();
  else if (object.is_list()) table = &list_methods();
  else return std::nullopt;
  if (is_mutating_method(object, name)) {
    throw Error("access to attribute '" + name + "' of '" + object.type_name() +
                "' object is unsafe (templates cannot modify values)");
  }
  for (const auto& [method_name, method] : *table) {
    if (method_name == name) {
      Value self = object;
      const Method& m = method;
      return Value::function(object.type_name() + "." + name, [self, m](CallArgs& args) { return m(self, args); });
    }
  }
  return std::nullopt;
}

Map make_globals() {
  Map globals;
  globals.set("range", Value::function("range", range_function));
  globals.set("namespace", Value::function("namespace", [](CallArgs& args) {
                Map attributes = map_from_args(args, "namespace");
                for (const auto& entry : attributes.entries) {
                  if (!entry.first.empty() && entry.first[0] == '_') {
                    throw Error("namespace(): underscore-prefixed attribute '" + entry.first + "' is not allowed");
                  }
                }
                return Value::namespace_of(std::move(attributes));
              }));
  globals.set("dict", Value::function("dict", [](CallArgs& args) { return Value(map_from_args(args, "dict")); }));
  globals.set("raise_exception", Value::function("raise_exception", [](CallArgs& args) -> Value {
                ArgReader a("raise_exception", args, {"message"});
                throw Error("raise_exception: " + to_str(a.get(0)));
              }));
  globals.set("strftime_now", Value::function("strftime_now", strftime_now));
  return globals;
}

}  // namespace fh1::jinja
