// Normalizers from tokenizer.json ("normalizer" field). HF keeps offset alignments while
// normalizing; we only need the normalized text, so each normalizer is a string -> string map.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace fh1 {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string text) const = 0;
};

// Returns nullptr for a JSON null. Throws fh1::Error naming any unsupported normalizer type.
std::unique_ptr<Normalizer> parse_normalizer(const nlohmann::json& spec);

}  // namespace fh1
