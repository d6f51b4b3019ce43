// Small checked accessors for tokenizer.json fields: every missing or mistyped field becomes an
// fh1::Error that names the component and the field, instead of a nlohmann exception.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "tokenizer/regex.h"
#include "util/error.h"

namespace fh1::json_util {

inline const nlohmann::json& get_field(const nlohmann::json& spec, const char* key,
                                       const std::string& where) {
  if (!spec.is_object()) throw fh1::mismatch("tokenizer.json: " + where, "an object", spec.type_name());
  auto it = spec.find(key);
  if (it == spec.end()) throw Error("tokenizer.json: " + where + ": missing field '" + key + "'");
  return *it;
}

inline std::string get_string(const nlohmann::json& spec, const char* key,
                              const std::string& where) {
  const auto& value = get_field(spec, key, where);
  if (!value.is_string()) {
    throw fh1::mismatch("tokenizer.json: " + where + "." + key, "a string", value.type_name());
  }
  return value.get<std::string>();
}

inline const nlohmann::json& get_array(const nlohmann::json& spec, const char* key,
                                       const std::string& where) {
  const auto& value = get_field(spec, key, where);
  if (!value.is_array()) {
    throw fh1::mismatch("tokenizer.json: " + where + "." + key, "an array", value.type_name());
  }
  return value;
}

inline std::string get_type(const nlohmann::json& spec, const std::string& where) {
  return get_string(spec, "type", where);
}

// Optional boolean/string with a default, still type-checked when present and non-null.
inline bool get_bool_or(const nlohmann::json& spec, const char* key, bool fallback,
                        const std::string& where) {
  auto it = spec.find(key);
  if (it == spec.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    throw fh1::mismatch("tokenizer.json: " + where + "." + key, "a boolean", it->type_name());
  }
  return it->get<bool>();
}

// A `pattern` field: {"String": "..."} (literal) or {"Regex": "..."}.
inline Regex parse_pattern(const nlohmann::json& spec, const std::string& where) {
  const auto& pattern = get_field(spec, "pattern", where);
  if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
    return Regex::literal(pattern["String"].get<std::string>(), where);
  }
  if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
    return Regex(pattern["Regex"].get<std::string>(), where);
  }
  throw fh1::mismatch("tokenizer.json: " + where + ".pattern", "{\"String\": ...} or {\"Regex\": ...}",
                 pattern.dump());
}

}  // namespace fh1::json_util
