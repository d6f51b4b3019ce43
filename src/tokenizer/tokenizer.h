// A byte-level BPE tokenizer that reads Hugging Face `tokenizer.json` files and gives the same ids
// as the `tokenizers` library for the components listed in src/tokenizer/README.md. Unsupported
// components are refused at load time with an fh1::Error that names them.
//
// Invalid UTF-8 in encode() input is not an error: each maximal invalid byte sequence is replaced
// by U+FFFD first (like Rust's String::from_utf8_lossy and Python's errors="replace"). decode()
// always returns valid UTF-8 (byte tokens that do not form a character become U+FFFD).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fh1 {

class Tokenizer {
 public:
  // Loads dir/tokenizer.json plus, when present, tokenizer_config.json, special_tokens_map.json
  // and chat_template.jinja (bos/eos tokens, add_bos_token/add_eos_token, chat template).
  static Tokenizer from_dir(const std::filesystem::path& dir);
  // Loads the contents of a tokenizer.json (no side files).
  static Tokenizer from_json(const std::string& tokenizer_json);

  // add_special_tokens applies the post-processor (e.g. prepends bos), as HF's encode does.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // The token string of an id ("" when the id is unknown), and back.
  std::string id_to_token(int32_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // Largest id (model vocab or added token) + 1.
  size_t vocab_size() const;

  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  // tokenizer_config.json's chat_template ("default" entry or first of a list); "" if none.
  const std::string& chat_template() const;
  // True for added tokens marked "special" (skipped by decode(ids, true)).
  bool is_special(int32_t id) const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Incremental detokenizer for generation: push ids one at a time and get back only text that is
// final (complete UTF-8 characters that later ids cannot change); flush() returns the rest. The
// concatenation of all pushes and the flush equals decode(all ids, skip_special).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false);
  std::string push(int32_t id);
  std::string flush();

 private:
  Tokenizer tokenizer_;  // a cheap shared handle, so the decoder cannot dangle
  bool skip_special_;
  std::vector<int32_t> window_;  // ids still needed to decode the not-yet-final text
  size_t prefix_ids_ = 0;        // window_[0, prefix_ids_) is context already emitted
  std::string prefix_text_;      // decode(window_[0, prefix_ids_))
};

}  // namespace fh1
