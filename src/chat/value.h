// The values a chat template computes with. They mirror the Python objects that Jinja2 sees
// when transformers renders a template (None, bool, int, float, str, list, dict, namespace,
// callables, and Jinja's Undefined), because the output must match Python byte for byte:
// printing follows Python's str(), truthiness and equality follow Python's rules.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace fh1::jinja {

class Value;
using List = std::vector<Value>;

// A dict with Python's insertion order (tool schemas are printed with tojson, so key order
// is visible in the output). Keys are strings: chat template data comes from JSON.
struct Map {
  std::vector<std::pair<std::string, Value>> entries;

  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value value);
};

// Arguments of a call as Python sees them: positional first, then keyword.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// Anything callable from a template: builtins (range, namespace, ...), bound methods
// ('abc'.upper), macros and loop.cycle.
struct Function {
  std::string name;
  std::function<Value(CallArgs&)> call;
};

// Jinja's Undefined remembers why it is undefined, so that misusing it gives the same hint
// as Python ("'x' is undefined", "'dict object' has no attribute 'y'").
struct Undefined {
  std::string hint;
};

class Value {
 public:
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Map, Namespace, Function };

  Value() : data_(Undefined{}) {}
  static Value undefined(std::string hint) { return Value(Undefined{std::move(hint)}); }
  static Value none() { return Value(nullptr); }
  Value(bool b) : data_(b) {}
  Value(int64_t i) : data_(i) {}
  Value(int i) : data_(static_cast<int64_t>(i)) {}
  Value(double d) : data_(d) {}
  Value(std::string s) : data_(std::move(s)) {}
  Value(const char* s) : data_(std::string(s)) {}
  Value(List list) : data_(std::make_shared<List>(std::move(list))) {}
  Value(Map map) : data_(std::make_shared<Map>(std::move(map))) {}
  static Value tuple(List items);
  static Value namespace_of(Map attributes);
  static Value function(std::string name, std::function<Value(CallArgs&)> call);

  Kind kind() const { return static_cast<Kind>(data_.index()); }
  bool is_undefined() const { return kind() == Kind::Undefined; }
  bool is_none() const { return kind() == Kind::None; }
  bool is_bool() const { return kind() == Kind::Bool; }
  bool is_int() const { return kind() == Kind::Int; }
  bool is_float() const { return kind() == Kind::Float; }
  bool is_number() const { return is_int() || is_float() || is_bool(); }  // Python: bool is an int
  bool is_string() const { return kind() == Kind::String; }
  bool is_list() const { return kind() == Kind::List; }
  bool is_map() const { return kind() == Kind::Map; }
  bool is_namespace() const { return kind() == Kind::Namespace; }
  bool is_function() const { return kind() == Kind::Function; }
  bool is_tuple() const { return is_list() && tuple_; }

  bool as_bool() const { return std::get<bool>(data_); }
  int64_t as_int() const;  // bool or int
  double as_double() const;  // bool, int or float
  const std::string& as_string() const { return std::get<std::string>(data_); }
  const List& as_list() const { return *std::get<std::shared_ptr<List>>(data_); }
  const Map& as_map() const { return *std::get<std::shared_ptr<Map>>(data_); }
  // A namespace is the one mutable object of a template ({% set ns.x = ... %}); copies of the
  // value share it, which is what lets a loop body update it.
  Map& namespace_attributes() const { return *std::get<NamespaceRef>(data_).attributes; }
  const Function& as_function() const { return *std::get<std::shared_ptr<Function>>(data_); }
  const std::string& undefined_hint() const { return std::get<Undefined>(data_).hint; }

  // Python's name of the type, for error messages ("str", "dict", ...).
  std::string type_name() const;

 private:
  struct NamespaceRef {
    std::shared_ptr<Map> attributes;
  };
  using Data = std::variant<Undefined, std::nullptr_t, bool, int64_t, double, std::string,
                            std::shared_ptr<List>, std::shared_ptr<Map>, NamespaceRef,
                            std::shared_ptr<Function>>;
  explicit Value(Data data) : data_(std::move(data)) {}
  Value(std::nullptr_t) : data_(nullptr) {}
  Data data_;
  bool tuple_ = false;  // a list made from a tuple prints as ('a', 1), as Python does
};

// Python's bool(x). Undefined is falsy.
bool truthy(const Value& v);
// Python's ==, deep for lists and dicts; 1 == 1.0 == True.
bool equal(const Value& a, const Value& b);
// Python's <, for numbers, strings and lists; throws fh1::Error for other types.
bool less(const Value& a, const Value& b);
// Python's str(x): what {{ x }} prints. Undefined prints as "".
std::string to_str(const Value& v);
// Python's repr(x): used for items inside printed lists and dicts.
std::string to_repr(const Value& v);
// Python's float repr: 1.0, 0.1, 1e+20, 1e-05.
std::string format_python_float(double d);

// json.dumps(x, ensure_ascii=False, indent=..., separators=..., sort_keys=...), which is the
// tojson filter that transformers installs (Jinja's own would HTML-escape).
struct JsonDumpOptions {
  bool has_indent = false;  // indent=None: everything on one line
  std::string indent;       // indent=2 becomes "  "
  bool has_separators = false;
  std::string item_separator;  // Python default: ", " on one line, "," when indented
  std::string key_separator;   // Python default: ": "
  bool sort_keys = false;
};
std::string to_json(const Value& v, const JsonDumpOptions& options);

// Input data: JSON objects become dicts in the JSON's own key order.
Value from_json(const nlohmann::json& j);
Value from_json(const nlohmann::ordered_json& j);

// Strings are UTF-8; Python indexes them by code point, so these helpers convert.
std::vector<std::string_view> split_code_points(std::string_view s);
size_t count_code_points(std::string_view s);
// Python's str.isspace() for one code point given as its UTF-8 bytes.
bool is_python_whitespace(std::string_view code_point);
// Python's str.strip/lstrip/rstrip with chars=None (Unicode whitespace) or a set of chars.
std::string python_strip(std::string_view s, const std::string* chars, bool left, bool right);

}  // namespace fh1::jinja
