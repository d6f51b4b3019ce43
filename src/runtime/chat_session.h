// A multi-turn conversation that keeps the model's state between turns instead of re-reading the
// whole conversation. Each turn renders the chat template over all messages and feeds only the
// tokens the state has not seen. The SSM state cannot be rewound, so a snapshot is kept at the
// end of the last prompt: if the template renders the previous reply with other tokens than were
// generated, the session resumes from that snapshot.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/generator.h"
#include "runtime/text_model.h"

namespace fh1 {

struct ChatReply {
  std::string text;
  GenerateResult result;
  int64_t prompt_tokens = 0;  // tokens fed for this turn
  int64_t reused_tokens = 0;  // tokens of the conversation not recomputed
};

class ChatSession {
 public:
  ChatSession(const Model& model, const TextModel& text, GenerateOptions options, std::string system_prompt = "");

  // Adds the user's message and generates the reply. on_text gets the reply's text as it is
  // decoded (never half a character); stop() returning true ends the reply early.
  ChatReply reply(const std::string& user_message, const std::function<void(const std::string&)>& on_text,
                  const std::function<bool()>& stop = nullptr);

  void reset();  // forget the conversation (keeps the system prompt)
  int64_t context_tokens() const { return static_cast<int64_t>(history_.size()); }

 private:
  // Brings the state to hold exactly `ids`; returns how many were reused from before.
  int64_t sync(const std::vector<int32_t>& ids, std::vector<float>& last_logits);

  const Model& model_;
  const TextModel& text_;
  GenerateOptions options_;
  std::string system_;
  nlohmann::ordered_json messages_ = nlohmann::ordered_json::array();
  SequenceState state_;
  std::vector<int32_t> history_;  // tokens in state_
  std::optional<SequenceState> snapshot_;
  std::vector<int32_t> snapshot_ids_;
};

}  // namespace fh1
