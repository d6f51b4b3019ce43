// What a model directory adds to the weights for text in and text out: the tokenizer, the chat
// template, and every token that ends a reply (config.json, generation_config.json and the
// tokenizer's eos all count, as in transformers' generate).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace fh1 {

class TextModel {
 public:
  // Reads dir/tokenizer.json (+ side files) and dir/generation_config.json when present.
  static TextModel load(const std::filesystem::path& dir, const ModelConfig& config);

  const Tokenizer& tokenizer() const { return tokenizer_; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  // True when the model ships a chat template (otherwise ChatML is used).
  bool has_own_chat_template() const { return own_template_; }

  // Prompt text of a conversation, as transformers' apply_chat_template(tokenize=False).
  std::string render_chat(const nlohmann::ordered_json& messages, bool add_generation_prompt) const;
  // ... and its tokens (special tokens come from the template text, none are added).
  std::vector<int32_t> encode_chat(const nlohmann::ordered_json& messages, bool add_generation_prompt) const;

 private:
  TextModel(Tokenizer tok, ChatTemplate tmpl) : tokenizer_(std::move(tok)), template_(std::move(tmpl)) {}
  Tokenizer tokenizer_;
  ChatTemplate template_;
  bool own_template_ = false;
  std::vector<int32_t> eos_ids_;
  std::string bos_token_, eos_token_;
};

}  // namespace fh1
