// Attribute/item access, slicing and operators with Python's semantics.
#include <cmath>
#include <limits>

#include "chat/builtins.h"
#include "util/error.h"

namespace fh1::jinja {

void throw_undefined(const Value& v) {
  throw Error(v.undefined_hint().empty() ? std::string("value is undefined") : v.undefined_hint());
}

ArgReader::ArgReader(const std::string& function, const CallArgs& args,
                     std::initializer_list<const char*> params)
    : function_(function), slots_(params.size()) {
  if (args.positional.size() > params.size()) {
    throw Error(function + "() takes at most " + std::to_string(params.size()) + " arguments (" +
                std::to_string(args.positional.size()) + " given)");
  }
  for (size_t i = 0; i < args.positional.size(); ++i) slots_[i] = args.positional[i];
  for (const auto& [key, value] : args.keyword) {
    size_t i = 0;
    for (const char* p : params) {
      if (key == p) break;
      ++i;
    }
    if (i == params.size()) throw Error(function + "() got an unexpected keyword argument '" + key + "'");
    if (slots_[i]) throw Error(function + "() got multiple values for argument '" + key + "'");
    slots_[i] = value;
  }
}

const Value& ArgReader::get(size_t i) const { return slots_[i] ? *slots_[i] : absent_; }

static std::string object_name(const Value& v) {
  if (v.is_none()) return "'None'";
  std::string name = "'";
  name += v.type_name();
  return name + " object'";
}

Value get_attribute(const Value& object, const std::string& name) {
  if (object.is_undefined()) throw_undefined(object);
  if (name.size() >= 2 && name.compare(0, 2, "__") == 0) {
    throw Error("access to attribute '" + name + "' of " + object_name(object) + " is unsafe");
  }
  if (auto method = bound_method(object, name)) return *method;
  if (object.is_map()) {
    if (const Value* v = object.as_map().find(name)) return *v;
  } else if (object.is_namespace()) {
    if (const Value* v = object.namespace_attributes().find(name)) return *v;
  }
  return Value::undefined(object_name(object) + " has no attribute '" + name + "'");
}

// Python's normalization of an index into [0, size); nullopt when out of range.
static std::optional<size_t> normalize_index(const Value& key, size_t size) {
  int64_t i = key.as_int();
  if (i < 0) i += static_cast<int64_t>(size);
  if (i < 0 || i >= static_cast<int64_t>(size)) return std::nullopt;
  return static_cast<size_t>(i);
}

Value get_item(const Value& object, const Value& key) {
  if (object.is_undefined()) throw_undefined(object);
  if (key.is_undefined()) throw_undefined(key);
  bool integer_key = key.is_int() || key.is_bool();
  if (object.is_list() && integer_key) {
    const List& items = object.as_list();
    if (auto i = normalize_index(key, items.size())) return items[*i];
    return Value::undefined(object.type_name() + " object has no element " + std::to_string(key.as_int()));
  }
  if (object.is_string() && integer_key) {
    auto chars = split_code_points(object.as_string());
    if (auto i = normalize_index(key, chars.size())) return Value(std::string(chars[*i]));
    return Value::undefined("str object has no element " + std::to_string(key.as_int()));
  }
  if (object.is_map() && key.is_string()) {
    if (const Value* v = object.as_map().find(key.as_string())) return *v;
  }
  if (key.is_string()) return get_attribute(object, key.as_string());
  return Value::undefined(object_name(object) + " has no element " + to_repr(key));
}

Value slice(const Value& object, const Value& start, const Value& stop, const Value& step) {
  if (object.is_undefined()) throw_undefined(object);
  auto bound = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_undefined() || v.is_none()) return std::nullopt;
    if (!v.is_int() && !v.is_bool()) {
      throw Error(std::string("slice ") + what + " must be an integer or None, not " + v.type_name());
    }
    return v.as_int();
  };
  int64_t stride = bound(step, "step").value_or(1);
  if (stride == 0) throw Error("slice step cannot be zero");
  std::vector<std::string_view> chars;
  size_t size = 0;
  if (object.is_string()) {
    chars = split_code_points(object.as_string());
    size = chars.size();
  } else if (object.is_list()) {
    size = object.as_list().size();
  } else {
    throw Error("'" + object.type_name() + "' object is not subscriptable");
  }
  // CPython's PySlice_AdjustIndices.
  const int64_t n = static_cast<int64_t>(size);
  auto adjust = [&](std::optional<int64_t> v, int64_t fallback) {
    if (!v) return fallback;
    int64_t i = *v;
    if (i < 0) {
      i += n;
      if (i < 0) i = stride < 0 ? -1 : 0;
    } else if (i >= n) {
      i = stride < 0 ? n - 1 : n;
    }
    return i;
  };
  int64_t lo = adjust(bound(start, "start"), stride < 0 ? n - 1 : 0);
  int64_t hi = adjust(bound(stop, "stop"), stride < 0 ? -1 : n);
  std::vector<size_t> picked;
  for (int64_t i = lo; stride > 0 ? i < hi : i > hi; i += stride) picked.push_back(static_cast<size_t>(i));
  if (object.is_string()) {
    std::string out;
    for (size_t i : picked) out += chars[i];
    return Value(std::move(out));
  }
  List out;
  for (size_t i : picked) out.push_back(object.as_list()[i]);
  return object.is_tuple() ? Value::tuple(std::move(out)) : Value(std::move(out));
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::Undefined: return false;  // iterates as empty
    case Value::Kind::String:
      if (!item.is_string()) {
        throw Error("'in <string>' requires string as left operand, not " + item.type_name());
      }
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::List:
      for (const Value& v : container.as_list()) {
        if (equal(v, item)) return true;
      }
      return false;
    case Value::Kind::Map: return item.is_string() && container.as_map().find(item.as_string()) != nullptr;
    default: throw Error("argument of type '" + container.type_name() + "' is not iterable");
  }
}

[[noreturn]] static void unsupported(const std::string& op, const Value& a, const Value& b) {
  throw Error("unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" +
              b.type_name() + "'");
}

static Value repeat(const Value& seq, int64_t times, size_t max_bytes) {
  if (times <= 0) return seq.is_string() ? Value(std::string()) : Value(List{});
  size_t unit = seq.is_string() ? seq.as_string().size() : seq.as_list().size() * sizeof(Value);
  if (unit != 0 && static_cast<uint64_t>(times) > max_bytes / unit) {
    throw Error("sequence repetition result exceeds the output limit of " + std::to_string(max_bytes) + " bytes");
  }
  if (seq.is_string()) {
    std::string out;
    for (int64_t i = 0; i < times; ++i) out += seq.as_string();
    return Value(std::move(out));
  }
  List out;
  for (int64_t i = 0; i < times; ++i) out.insert(out.end(), seq.as_list().begin(), seq.as_list().end());
  return Value(std::move(out));
}

static Value int_result(bool overflow, int64_t r, const std::string& op) {
  if (overflow) throw Error("integer overflow in '" + op + "' (Python ints are unbounded; this engine uses 64 bits)");
  return Value(r);
}

Value binary_op(const std::string& op, const Value& a, const Value& b, size_t max_bytes) {
  if (a.is_undefined()) throw_undefined(a);
  if (b.is_undefined()) throw_undefined(b);
  const bool ints = (a.is_int() || a.is_bool()) && (b.is_int() || b.is_bool());
  const bool numbers = a.is_number() && b.is_number();
  int64_t r = 0;
  if (op == "+") {
    if (ints) {
      bool overflow = __builtin_add_overflow(a.as_int(), b.as_int(), &r);  // before r is read
      return int_result(overflow, r, op);
    }
    if (numbers) return Value(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) {
      if (a.as_string().size() + b.as_string().size() > max_bytes) {
        throw Error("string concatenation exceeds the output limit of " + std::to_string(max_bytes) + " bytes");
      }
      return Value(a.as_string() + b.as_string());
    }
    if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
      List out = a.as_list();
      out.insert(out.end(), b.as_list().begin(), b.as_list().end());
      return a.is_tuple() ? Value::tuple(std::move(out)) : Value(std::move(out));
    }
    if (a.is_string() || b.is_string()) {
      throw Error("can only concatenate str (not \"" + (a.is_string() ? b : a).type_name() + "\") to str");
    }
    unsupported(op, a, b);
  }
  if (op == "-") {
    if (ints) {
      bool overflow = __builtin_sub_overflow(a.as_int(), b.as_int(), &r);  // before r is read
      return int_result(overflow, r, op);
    }
    if (numbers) return Value(a.as_double() - b.as_double());
    unsupported(op, a, b);
  }
  if (op == "*") {
    if (ints) {
      bool overflow = __builtin_mul_overflow(a.as_int(), b.as_int(), &r);  // before r is read
      return int_result(overflow, r, op);
    }
    if (numbers) return Value(a.as_double() * b.as_double());
    if ((a.is_string() || a.is_list()) && (b.is_int() || b.is_bool())) return repeat(a, b.as_int(), max_bytes);
    if ((b.is_string() || b.is_list()) && (a.is_int() || a.is_bool())) return repeat(b, a.as_int(), max_bytes);
    unsupported(op, a, b);
  }
  if (!numbers) {
    if (op == "%" && a.is_string()) {
      throw Error("printf-style string formatting ('...' % args) is not supported; use ~ or format");
    }
    unsupported(op, a, b);
  }
  if (op == "/") {
    if (b.as_double() == 0.0) throw Error("division by zero");
    return Value(a.as_double() / b.as_double());
  }
  if (op == "//" || op == "%") {
    if (ints) {
      int64_t x = a.as_int(), y = b.as_int();
      if (y == 0) throw Error("integer division or modulo by zero");
      if (x == std::numeric_limits<int64_t>::min() && y == -1) {
        return int_result(true, 0, op);
      }
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {  // Python floors toward negative infinity
        --q;
        m += y;
      }
      return Value(op == "//" ? q : m);
    }
    double x = a.as_double(), y = b.as_double();
    if (y == 0.0) throw Error("float division or modulo by zero");
    if (op == "//") return Value(std::floor(x / y));
    double m = std::fmod(x, y);
    if (m != 0.0 && ((m < 0) != (y < 0))) m += y;
    return Value(m);
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) {
      int64_t base = a.as_int(), exponent = b.as_int(), result = 1;
      if (base == 0 || base == 1) return Value(exponent == 0 ? int64_t{1} : base);
      if (base == -1) return Value(exponent % 2 == 0 ? int64_t{1} : int64_t{-1});
      for (int64_t e = 0; e < exponent; ++e) {  // |base| >= 2 overflows within 63 steps
        if (__builtin_mul_overflow(result, base, &result)) return int_result(true, 0, op);
      }
      return Value(result);
    }
    return Value(std::pow(a.as_double(), b.as_double()));
  }
  throw Error("unknown operator '" + op + "'");
}

Value unary_minus(const Value& v) {
  if (v.is_undefined()) throw_undefined(v);
  if (v.is_float()) return Value(-v.as_double());
  if (v.is_int() || v.is_bool()) {
    if (v.as_int() == std::numeric_limits<int64_t>::min()) return int_result(true, 0, "-");
    return Value(-v.as_int());
  }
  throw Error("bad operand type for unary -: '" + v.type_name() + "'");
}

List iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: return v.as_list();
    case Value::Kind::Map: {
      List keys;
      for (const auto& entry : v.as_map().entries) keys.push_back(Value(entry.first));
      return keys;
    }
    case Value::Kind::String: {
      List chars;
      for (std::string_view c : split_code_points(v.as_string())) chars.push_back(Value(std::string(c)));
      return chars;
    }
    default: throw Error("'" + v.type_name() + "' object is not iterable");
  }
}

}  // namespace fh1::jinja
