// What expressions can do to values: attribute and item access, slicing, operators, and the
// filters, tests, methods and globals of Jinja2 as transformers sets it up. Everything here
// throws fh1::Error on misuse, with Python's wording where it helps to recognize the problem;
// the renderer adds the template line.
#pragma once

#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "chat/value.h"

namespace fh1::jinja {

// Jinja's default Undefined raises when it is used beyond printing, testing and iterating.
[[noreturn]] void throw_undefined(const Value& v);

// Binds a call's arguments to named parameters the way Python does, so every builtin can take
// its arguments positionally or by keyword.
class ArgReader {
 public:
  ArgReader(const std::string& function, const CallArgs& args, std::initializer_list<const char*> params);
  bool has(size_t i) const { return slots_[i].has_value(); }
  const Value& get(size_t i) const;  // Undefined when absent
  Value get_or(size_t i, Value fallback) const { return has(i) ? *slots_[i] : std::move(fallback); }

 private:
  std::string function_;
  std::vector<std::optional<Value>> slots_;
  Value absent_;
};

// obj.name: methods of str/dict/list first (as Python's getattr would), then dict keys.
Value get_attribute(const Value& object, const std::string& name);
// obj[key]: items first, then attributes (Jinja's getitem). Missing keys give Undefined.
Value get_item(const Value& object, const Value& key);
// obj[start:stop:step] on strings (by code point) and lists.
Value slice(const Value& object, const Value& start, const Value& stop, const Value& step);
// item in container
bool contains(const Value& container, const Value& item);
// + - * / // % ** with Python's semantics. max_bytes caps strings and lists made by + and *.
Value binary_op(const std::string& op, const Value& a, const Value& b, size_t max_bytes);
Value unary_minus(const Value& v);
// The items a for loop visits: list items, dict keys, string characters; Undefined is empty.
List iterate(const Value& v);

// Filters and tests by name. Unknown names are rejected when the template is constructed.
bool is_known_filter(const std::string& name);
bool is_known_test(const std::string& name);
Value apply_filter(const std::string& name, const Value& input, const CallArgs& args);
bool apply_test(const std::string& name, const Value& input, const CallArgs& args);

// Methods of str, dict and list reachable as obj.method(...); nullopt when there is none.
std::optional<Value> bound_method(const Value& object, const std::string& name);

// range, namespace, dict, raise_exception, strftime_now.
Map make_globals();

// Python's str methods that filters and methods share; strings are UTF-8.
std::string python_upper(const std::string& s);
std::string python_lower(const std::string& s);
std::string python_capitalize(const std::string& s);
std::string python_title(const std::string& s);
std::string python_replace(const std::string& s, const std::string& old_text,
                           const std::string& new_text, int64_t count);
List python_split(const std::string& s, const Value& separator, int64_t max_split);

}  // namespace fh1::jinja
