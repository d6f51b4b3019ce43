// The request bodies of POST /v1/chat/completions and /v1/completions, parsed and checked: every
// field of the supported subset is type- and range-checked, and a bad one is an ApiError (400, or
// 404 for an unknown model) naming the field, as the OpenAI API does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/scheduler.h"
#include "runtime/text_model.h"

namespace fh1::server {

enum class Endpoint { chat, completion };

// What the server serves: one model under one name.
struct ServedModel {
  std::string name;
  const TextModel* text = nullptr;
  int64_t context_length = 0;
  int vocab_size = 0;
};

struct CompletionRequest {
  Endpoint endpoint = Endpoint::chat;
  GenerationParams generation;  // prompt ids, sampling, limits, eos
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;   // stream_options.include_usage
  bool logprobs = false;        // chat: logprobs; completions: logprobs != null
};

// Parses a request body (JSON text). Throws ApiError.
CompletionRequest parse_completion_request(Endpoint endpoint, const std::string& body, const ServedModel& model);

}  // namespace fh1::server
