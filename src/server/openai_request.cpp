#include "server/openai_request.h"

#include <cmath>
#include <limits>
#include <random>

#include "server/api_error.h"
#include "util/error.h"

namespace fh1::server {
namespace {

using nlohmann::json;

std::string type_name(const json& v) {
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

ApiError bad(const std::string& param, const std::string& message) { return ApiError(400, message, param); }

// A field that is absent or null counts as not given.
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number_in(const json& body, const char* name, double fallback, double lo, double hi) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number()) throw bad(name, std::string("'") + name + "' must be a number, got " + type_name(*v));
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi))
    throw bad(name, std::string("'") + name + "' must be between " + json(lo).dump() + " and " + json(hi).dump() +
                        ", got " + v->dump());
  return x;
}

int64_t integer_in(const json& body, const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_number_integer())
    throw bad(name, std::string("'") + name + "' must be an integer, got " + type_name(*v) + " " + v->dump());
  const int64_t x = v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi) ? hi + 1 : v->get<int64_t>();
  if (x < lo || x > hi)
    throw bad(name, std::string("'") + name + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                        ", got " + v->dump());
  return x;
}

bool boolean(const json& body, const char* name, bool fallback) {
  const json* v = field(body, name);
  if (!v) return fallback;
  if (!v->is_boolean()) throw bad(name, std::string("'") + name + "' must be a boolean, got " + type_name(*v));
  return v->get<bool>();
}

// message content: a string, or an array of {"type": "text", "text": ...} parts.
std::string message_content(const json& m, size_t i) {
  const std::string param = "messages[" + std::to_string(i) + "].content";
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) throw bad(param, "'" + param + "' must be a string or an array of text parts");
  std::string text;
  for (const auto& part : *it) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
      throw bad(param, "'" + param + "': only text parts ({\"type\": \"text\", \"text\": ...}) are supported");
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<int32_t> chat_prompt(const json& body, const ServedModel& model) {
  const json* msgs = field(body, "messages");
  if (!msgs) throw bad("messages", "'messages' is required");
  if (!msgs->is_array() || msgs->empty()) throw bad("messages", "'messages' must be a non-empty array");
  nlohmann::ordered_json conversation = nlohmann::ordered_json::array();
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string param = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw bad(param, "'" + param + "' must be an object");
    if (!m.contains("role") || !m["role"].is_string())
      throw bad(param + ".role", "'" + param + ".role' must be a string");
    const std::string role = m["role"].get<std::string>();
    if (role != "system" && role != "user" && role != "assistant" && role != "developer" && role != "tool")
      throw bad(param + ".role", "'" + param + ".role' must be system, developer, user, assistant or tool, got '" +
                                     role + "'");
    conversation.push_back({{"role", role == "developer" ? "system" : role}, {"content", message_content(m, i)}});
  }
  try {
    return model.text->encode_chat(conversation, /*add_generation_prompt=*/true);
  } catch (const Error& e) {
    throw bad("messages", std::string("the chat template failed: ") + e.what());
  }
}

std::vector<int32_t> token_list(const json& v, const ServedModel& model) {
  std::vector<int32_t> ids;
  for (const auto& x : v) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= model.vocab_size)
      throw bad("prompt", "'prompt': token ids must be integers in [0, " + std::to_string(model.vocab_size) +
                              "), got " + x.dump());
    ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
  }
  return ids;
}

std::vector<int32_t> completion_prompt(const json& body, const ServedModel& model) {
  const json* p = field(body, "prompt");
  if (!p) throw bad("prompt", "'prompt' is required");
  const json* one = p;
  if (p->is_array() && !p->empty() && (p->front().is_string() || p->front().is_array())) {
    if (p->size() != 1) throw bad("prompt", "'prompt': only one prompt per request is supported");
    one = &p->front();
  }
  if (one->is_string()) return model.text->tokenizer().encode(one->get<std::string>(), /*add_special_tokens=*/true);
  if (one->is_array()) return token_list(*one, model);
  throw bad("prompt", "'prompt' must be a string, an array of token ids, or an array of one of them");
}

std::vector<std::string> stop_strings(const json& body) {
  const json* s = field(body, "stop");
  if (!s) return {};
  if (s->is_string()) return {s->get<std::string>()};
  if (!s->is_array()) throw bad("stop", "'stop' must be a string or an array of strings");
  if (s->size() > 16) throw bad("stop", "'stop' may hold at most 16 strings");
  std::vector<std::string> out;
  for (const auto& x : *s) {
    if (!x.is_string()) throw bad("stop", "'stop' must be a string or an array of strings");
    out.push_back(x.get<std::string>());
  }
  return out;
}

}  // namespace

CompletionRequest parse_completion_request(Endpoint endpoint, const std::string& body_text, const ServedModel& model) {
  json body;
  try {
    body = json::parse(body_text);
  } catch (const json::exception& e) {
    throw ApiError(400, std::string("the request body is not valid JSON: ") + e.what(), "", "invalid_json");
  }
  if (!body.is_object()) throw ApiError(400, "the request body must be a JSON object", "", "invalid_json");

  if (const json* m = field(body, "model")) {
    if (!m->is_string()) throw bad("model", "'model' must be a string");
    if (m->get<std::string>() != model.name)
      throw ApiError(404, "The model '" + m->get<std::string>() + "' does not exist; this server serves '" +
                              model.name + "'", "model", "model_not_found");
  }
  CompletionRequest r;
  r.endpoint = endpoint;
  GenerationParams& g = r.generation;
  const bool chat = endpoint == Endpoint::chat;

  if (integer_in(body, "n", 1, 1, 1) != 1) throw bad("n", "'n' must be 1");
  if (integer_in(body, "best_of", 1, 1, 1) != 1) throw bad("best_of", "'best_of' must be 1");
  if (boolean(body, "echo", false)) throw bad("echo", "'echo' is not supported");
  r.stream = boolean(body, "stream", false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) throw bad("stream_options", "'stream_options' must be an object");
    if (!r.stream) throw bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    r.include_usage = boolean(*so, "include_usage", false);
  }
  g.sampling.temperature = static_cast<float>(number_in(body, "temperature", 1.0, 0.0, 2.0));
  g.sampling.top_p = static_cast<float>(number_in(body, "top_p", 1.0, 0.0, 1.0));
  if (g.sampling.top_p <= 0.0f) throw bad("top_p", "'top_p' must be greater than 0");
  const int64_t top_k = integer_in(body, "top_k", 0, -1, std::numeric_limits<int32_t>::max());
  g.sampling.top_k = top_k < 0 ? 0 : static_cast<int>(top_k);
  g.sampling.min_p = static_cast<float>(number_in(body, "min_p", 0.0, 0.0, 1.0));
  g.presence_penalty = static_cast<float>(number_in(body, "presence_penalty", 0.0, -2.0, 2.0));
  g.frequency_penalty = static_cast<float>(number_in(body, "frequency_penalty", 0.0, -2.0, 2.0));
  if (const json* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) throw bad("seed", "'seed' must be an integer, got " + type_name(*seed));
    g.sampling.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : static_cast<uint64_t>(seed->get<int64_t>());
  } else {
    static thread_local std::mt19937_64 seeds{std::random_device{}()};
    g.sampling.seed = seeds();
  }
  r.stop = stop_strings(body);

  if (chat) {
    r.logprobs = boolean(body, "logprobs", false);
    const int64_t top = integer_in(body, "top_logprobs", 0, 0, 20);
    if (field(body, "top_logprobs") && !r.logprobs)
      throw bad("top_logprobs", "'top_logprobs' needs 'logprobs' to be true");
    g.top_logprobs = r.logprobs ? static_cast<int>(top) : -1;
  } else if (field(body, "logprobs")) {
    r.logprobs = true;
    g.top_logprobs = static_cast<int>(integer_in(body, "logprobs", 0, 0, 5));
  }

  g.prompt = chat ? chat_prompt(body, model) : completion_prompt(body, model);
  const char* prompt_param = chat ? "messages" : "prompt";
  if (g.prompt.empty()) throw bad(prompt_param, "the prompt is empty");
  const int64_t n_prompt = static_cast<int64_t>(g.prompt.size());
  if (n_prompt >= model.context_length)
    throw ApiError(400, "This model's maximum context length is " + std::to_string(model.context_length) +
                            " tokens, but the prompt has " + std::to_string(n_prompt) +
                            " tokens (at least one must be left to generate)", prompt_param, "context_length_exceeded");
  const int64_t room = model.context_length - n_prompt;
  const char* max_param = chat && field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const int64_t max_tokens =
      integer_in(body, max_param, chat ? room : 16, 1, std::numeric_limits<int32_t>::max());
  g.max_tokens = static_cast<int>(std::min(max_tokens, room));
  if (!boolean(body, "ignore_eos", false)) g.eos_ids = model.text->eos_ids();
  return r;
}

}  // namespace fh1::server
