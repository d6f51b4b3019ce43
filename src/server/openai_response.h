// Turns the tokens of one request into OpenAI response objects: text through the streaming
// detokenizer and the stop strings, logprobs in the endpoint's format, usage, and the JSON of a
// whole response or of one streamed chunk.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/scheduler.h"
#include "server/openai_request.h"
#include "server/stop_strings.h"
#include "tokenizer/tokenizer.h"

namespace fh1::server {

class ReplyBuilder {
 public:
  ReplyBuilder(const CompletionRequest& request, const Tokenizer& tokenizer, std::string model_name);

  // New text and logprob entries since the last call.
  struct Delta {
    std::string text;
    nlohmann::json logprobs;  // chat: array of content entries; completions: {tokens, token_logprobs, ...}
    bool empty() const;
  };
  // Consumes generated tokens. Once a stop string matched, further tokens are ignored.
  Delta add(const std::vector<GeneratedToken>& tokens);
  // The end of generation: the text held back by the decoder and the stop strings.
  Delta finish();
  bool stop_matched() const { return stops_.matched(); }
  // Tokens that made the reply (those after a matched stop string do not count).
  int64_t tokens_used() const { return tokens_used_; }
  // "stop" or "length" (a stop string matched counts as "stop").
  std::string finish_reason(const GenerationResult& result) const;

  // Streaming: one chunk (chat.completion.chunk / text_completion).
  nlohmann::json chunk(const Delta& delta, const std::optional<std::string>& finish_reason, bool with_role);
  nlohmann::json usage_chunk(const GenerationResult& result) const;  // choices: [], usage
  // Not streaming: the whole response, from everything added.
  nlohmann::json response(const GenerationResult& result) const;
  static nlohmann::json usage(const GenerationResult& result);

 private:
  nlohmann::json empty_logprobs() const;
  void append_logprobs(nlohmann::json& into, const GeneratedToken& t);
  std::string token_text(int32_t id) const;

  const CompletionRequest& request_;
  Tokenizer tokenizer_;
  StreamDecoder decoder_;
  StopStringMatcher stops_;
  std::string model_, id_;
  int64_t created_;
  std::string text_;                // everything released
  nlohmann::json all_logprobs_;     // everything added
  size_t text_offset_ = 0;          // completions' text_offset of the next token
  int64_t tokens_used_ = 0;
};

// A fresh response id ("chatcmpl-..." / "cmpl-...").
std::string new_response_id(Endpoint endpoint);

}  // namespace fh1::server
