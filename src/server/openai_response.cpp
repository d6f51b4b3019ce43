#include "server/openai_response.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>

namespace fh1::server {

using nlohmann::json;

std::string new_response_id(Endpoint endpoint) {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016llx%08llx", static_cast<unsigned long long>(salt),
                static_cast<unsigned long long>(++counter));
  return (endpoint == Endpoint::chat ? "chatcmpl-" : "cmpl-") + std::string(buf);
}

ReplyBuilder::ReplyBuilder(const CompletionRequest& request, const Tokenizer& tokenizer, std::string model_name)
    : request_(request),
      tokenizer_(tokenizer),
      decoder_(tokenizer, /*skip_special=*/true),
      stops_(request.stop),
      model_(std::move(model_name)),
      id_(new_response_id(request.endpoint)),
      created_(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                   .count()),
      all_logprobs_(empty_logprobs()) {}

bool ReplyBuilder::Delta::empty() const {
  if (!text.empty()) return false;
  if (logprobs.is_array()) return logprobs.empty();
  if (logprobs.is_object()) return logprobs["tokens"].empty();
  return true;
}

json ReplyBuilder::empty_logprobs() const {
  if (!request_.logprobs) return nullptr;
  if (request_.endpoint == Endpoint::chat) return json::array();
  return {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
          {"text_offset", json::array()}};
}

std::string ReplyBuilder::token_text(int32_t id) const {
  const int32_t one[1] = {id};
  return tokenizer_.decode(one, /*skip_special_tokens=*/false);
}

void ReplyBuilder::append_logprobs(json& into, const GeneratedToken& t) {
  const std::string text = token_text(t.id);
  if (request_.endpoint == Endpoint::chat) {
    auto entry = [](float lp, const std::string& s) {
      return json{{"token", s}, {"logprob", lp}, {"bytes", std::vector<uint8_t>(s.begin(), s.end())}};
    };
    json e = entry(t.logprob, text);
    e["top_logprobs"] = json::array();
    for (const auto& [id, lp] : t.top) e["top_logprobs"].push_back(entry(lp, token_text(id)));
    into.push_back(e);
  } else {
    json top = json::object();
    for (const auto& [id, lp] : t.top) {  // tokens that read the same share a key: keep the best
      const std::string key = token_text(id);
      if (!top.contains(key)) top[key] = lp;
    }
    into["tokens"].push_back(text);
    into["token_logprobs"].push_back(t.logprob);
    into["top_logprobs"].push_back(top);
    into["text_offset"].push_back(text_offset_);
    text_offset_ += text.size();
  }
}

ReplyBuilder::Delta ReplyBuilder::add(const std::vector<GeneratedToken>& tokens) {
  Delta d{"", empty_logprobs()};
  for (const auto& t : tokens) {
    if (stops_.matched()) break;
    ++tokens_used_;
    if (request_.logprobs) {
      append_logprobs(d.logprobs, t);
    }
    if (t.is_eos) continue;  // ends the reply, never part of its text
    d.text += stops_.push(decoder_.push(t.id));
  }
  if (request_.logprobs) {
    if (request_.endpoint == Endpoint::chat) {
      for (const auto& e : d.logprobs) all_logprobs_.push_back(e);
    } else {
      for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
        for (const auto& e : d.logprobs[k]) all_logprobs_[k].push_back(e);
    }
  }
  text_ += d.text;
  return d;
}

ReplyBuilder::Delta ReplyBuilder::finish() {
  Delta d{"", empty_logprobs()};
  if (!stops_.matched()) {
    d.text = stops_.push(decoder_.flush());
    d.text += stops_.flush();
  }
  text_ += d.text;
  return d;
}

std::string ReplyBuilder::finish_reason(const GenerationResult& result) const {
  if (stops_.matched()) return "stop";
  return result.finish_reason == "stop" ? "stop" : "length";
}

json ReplyBuilder::usage(const GenerationResult& r) {
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", r.completion_tokens},
          {"total_tokens", r.prompt_tokens + r.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", r.cached_tokens}}}};
}

json ReplyBuilder::chunk(const Delta& delta, const std::optional<std::string>& finish_reason, bool with_role) {
  json choice;
  json lp = delta.logprobs;
  if (request_.endpoint == Endpoint::chat) {
    json d = json::object();
    if (with_role) d["role"] = "assistant";
    if (with_role || !delta.text.empty()) d["content"] = delta.text;
    choice = {{"index", 0}, {"delta", d}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    if (lp.is_array() && !lp.empty()) choice["logprobs"] = {{"content", lp}};
  } else {
    choice = {{"index", 0}, {"text", delta.text}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    if (lp.is_object() && !lp["tokens"].empty()) choice["logprobs"] = lp;
  }
  if (finish_reason) choice["finish_reason"] = *finish_reason;
  json c = {{"id", id_},
            {"object", request_.endpoint == Endpoint::chat ? "chat.completion.chunk" : "text_completion"},
            {"created", created_},
            {"model", model_},
            {"system_fingerprint", nullptr},
            {"choices", json::array({choice})}};
  if (request_.include_usage) c["usage"] = nullptr;
  return c;
}

json ReplyBuilder::usage_chunk(const GenerationResult& result) const {
  return {{"id", id_},
          {"object", request_.endpoint == Endpoint::chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created_},
          {"model", model_},
          {"system_fingerprint", nullptr},
          {"choices", json::array()},
          {"usage", usage(result)}};
}

json ReplyBuilder::response(const GenerationResult& result) const {
  json choice;
  if (request_.endpoint == Endpoint::chat) {
    choice = {{"index", 0},
              {"message", {{"role", "assistant"}, {"content", text_}, {"refusal", nullptr}}},
              {"logprobs", request_.logprobs ? json{{"content", all_logprobs_}} : json(nullptr)},
              {"finish_reason", finish_reason(result)}};
  } else {
    choice = {{"index", 0}, {"text", text_}, {"logprobs", all_logprobs_}, {"finish_reason", finish_reason(result)}};
  }
  return {{"id", id_},
          {"object", request_.endpoint == Endpoint::chat ? "chat.completion" : "text_completion"},
          {"created", created_},
          {"model", model_},
          {"system_fingerprint", nullptr},
          {"choices", json::array({choice})},
          {"usage", usage(result)}};
}

}  // namespace fh1::server
