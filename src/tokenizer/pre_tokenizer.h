// Pre-tokenizers from tokenizer.json ("pre_tokenizer" field): they cut normalized text into the
// pieces ("words") that the BPE model encodes independently. Splitting follows HF `tokenizers`
// exactly: a pattern yields match / non-match spans, and a behavior decides how they become pieces.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace fh1 {

struct Piece {
  std::string text;
  // True when the piece begins at byte 0 of the original input (Metaspace prepend_scheme "first").
  bool at_origin = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their split (and possibly transformed) pieces; empty pieces are dropped.
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

// Returns nullptr for a JSON null. Throws fh1::Error naming any unsupported pre-tokenizer type.
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const nlohmann::json& spec);

}  // namespace fh1
