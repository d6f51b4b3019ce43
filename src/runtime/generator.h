// Generation loop for one sequence: prefill the prompt in bounded chunks, then decode token by
// token until n tokens, an end-of-sequence token, or the context limit.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/sampler.h"

namespace fh1 {

struct GenerateOptions {
  int max_new_tokens = 64;
  SamplingParams sampling;
  std::vector<int32_t> eos_ids;   // stop when one is generated (it is kept in the output)
  bool ignore_eos = false;
  int64_t context_length = 0;     // 0: the model's max_position_embeddings
  int64_t prefill_chunk = 0;      // prompt tokens per forward call (0: the backend's preferred_prompt_chunk())
};

struct GenerateResult {
  std::vector<int32_t> ids;     // generated tokens
  std::string finish_reason;    // "length", "stop" (eos), "context"
  double prefill_seconds = 0, decode_seconds = 0;
};

// Runs the prompt then generates. on_token returns false to stop early (finish_reason "cancelled").
GenerateResult generate(const Model& model, SequenceState& state, std::span<const int32_t> prompt,
                        const GenerateOptions& options,
                        const std::function<bool(int32_t)>& on_token = nullptr);

// Generates from a state that has consumed a prompt whose last logits are given.
GenerateResult continue_generation(const Model& model, SequenceState& state, std::vector<float> logits,
                                   const GenerateOptions& options,
                                   const std::function<bool(int32_t)>& on_token = nullptr);

// The prompt tokens a forward call takes: options.prefill_chunk, or the backend's choice.
int64_t prompt_chunk(const Model& model, const GenerateOptions& options);

// The context limit in force: options.context_length, or the model's max_position_embeddings.
int64_t context_limit(const Model& model, const GenerateOptions& options);

// Feeds tokens into the state in chunks of at most `chunk`; returns the logits of the last one.
std::vector<float> prefill(const Model& model, SequenceState& state, std::span<const int32_t> tokens, int64_t chunk);

}  // namespace fh1
