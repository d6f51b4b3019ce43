// Decoders from tokenizer.json ("decoder" field): they turn the token strings of a decode back
// into text. Like HF's decode_chain, each decoder maps a list of strings to a list of strings and
// the final text is their concatenation.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace fh1 {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
};

// Returns nullptr for a JSON null. Throws fh1::Error naming any unsupported decoder type.
std::unique_ptr<Decoder> parse_decoder(const nlohmann::json& spec);

}  // namespace fh1
