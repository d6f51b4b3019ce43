// Reading the JSON files of a model directory. Python's json module writes non-finite floats as
// bare Infinity / -Infinity / NaN, which strict JSON parsers reject; they are read here as the
// strings "Infinity", "-Infinity", "NaN" (see json_number) so configs written by transformers load.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace fh1 {

// Parses text as JSON, accepting bare Infinity/-Infinity/NaN. `where` names the source in errors.
nlohmann::json parse_json_relaxed(const std::string& text, const std::string& where);

// Reads and parses a JSON file; throws fh1::Error naming the file on any failure.
nlohmann::json read_json_file(const std::filesystem::path& path);

// A JSON value as a double: a number, one of the strings above, or {"__float__": "Infinity"}.
// Throws fh1::Error naming `where` for anything else.
double json_number(const nlohmann::json& value, const std::string& where);

// Reads a whole file into a string; throws fh1::Error on failure.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace fh1
