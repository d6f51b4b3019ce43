#include "runtime/chat_session.h"

#include <algorithm>

#include "util/error.h"

namespace fh1 {

namespace {

bool is_prefix(const std::vector<int32_t>& prefix, const std::vector<int32_t>& of) {
  return prefix.size() <= of.size() && std::equal(prefix.begin(), prefix.end(), of.begin());
}

}  // namespace

ChatSession::ChatSession(const Model& model, const TextModel& text, GenerateOptions options, std::string system_prompt)
    : model_(model), text_(text), options_(std::move(options)), system_(std::move(system_prompt)), state_(model.new_state()) {
  reset();
}

void ChatSession::reset() {
  messages_ = nlohmann::ordered_json::array();
  if (!system_.empty()) messages_.push_back({{"role", "system"}, {"content", system_}});
  state_.reset();
  history_.clear();
  snapshot_.reset();
  snapshot_ids_.clear();
}

int64_t ChatSession::sync(const std::vector<int32_t>& ids, std::vector<float>& last_logits) {
  // Reuse the live state if it holds a proper prefix, else the snapshot, else start over.
  if (!(is_prefix(history_, ids) && history_.size() < ids.size())) {
    if (snapshot_ && is_prefix(snapshot_ids_, ids) && snapshot_ids_.size() < ids.size()) {
      state_ = snapshot_->clone();
      history_ = snapshot_ids_;
    } else {
      state_.reset();
      history_.clear();
    }
  }
  const int64_t reused = static_cast<int64_t>(history_.size());
  const std::span<const int32_t> rest = std::span<const int32_t>(ids).subspan(history_.size());
  last_logits = prefill(model_, state_, rest, prompt_chunk(model_, options_));
  history_ = ids;
  return reused;
}

ChatReply ChatSession::reply(const std::string& user_message, const std::function<void(const std::string&)>& on_text,
                             const std::function<bool()>& stop) {
  messages_.push_back({{"role", "user"}, {"content", user_message}});
  const std::vector<int32_t> prompt = text_.encode_chat(messages_, /*add_generation_prompt=*/true);
  const int64_t ctx = context_limit(model_, options_);
  if (static_cast<int64_t>(prompt.size()) >= ctx) {
    messages_.erase(messages_.end() - 1);
    throw Error("the conversation has " + std::to_string(prompt.size()) + " tokens, the context length is " +
                std::to_string(ctx) + ": /reset to start over");
  }
  ChatReply out;
  std::vector<float> logits;
  out.reused_tokens = sync(prompt, logits);
  out.prompt_tokens = static_cast<int64_t>(prompt.size()) - out.reused_tokens;
  snapshot_ = state_.clone();
  snapshot_ids_ = prompt;

  StreamDecoder decoder(text_.tokenizer(), /*skip_special=*/true);
  GenerateOptions opt = options_;
  opt.eos_ids = text_.eos_ids();
  out.result = continue_generation(model_, state_, std::move(logits), opt, [&](int32_t id) {
    history_.push_back(id);
    const bool is_eos = std::find(opt.eos_ids.begin(), opt.eos_ids.end(), id) != opt.eos_ids.end();
    if (!is_eos) {
      const std::string piece = decoder.push(id);
      out.text += piece;
      if (on_text && !piece.empty()) on_text(piece);
    }
    return !(stop && stop());
  });
  // The last sampled token was never fed to the model: the state holds one token less.
  if (!out.result.ids.empty()) history_.pop_back();
  const std::string rest = decoder.flush();
  out.text += rest;
  if (on_text && !rest.empty()) on_text(rest);
  messages_.push_back({{"role", "assistant"}, {"content", out.text}});
  return out;
}

}  // namespace fh1
