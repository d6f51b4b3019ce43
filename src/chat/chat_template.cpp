#include "chat/chat_template.h"

#include "chat/ast.h"
#include "chat/lexer.h"
#include "chat/parser.h"
#include "chat/renderer.h"
#include "util/error.h"

namespace fh1 {

nlohmann::ordered_json to_json_messages(const std::vector<ChatMessage>& messages) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const ChatMessage& m : messages) out.push_back({{"role", m.role}, {"content", m.content}});
  return out;
}

ChatTemplate::ChatTemplate(std::string source)
    : source_(std::move(source)),
      body_(std::make_unique<std::vector<std::unique_ptr<jinja::Stmt>>>(jinja::parse(jinja::tokenize(source_)))) {
  jinja::check_names(*body_);
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

namespace {

template <typename Json>
std::string render_with(const jinja::Body& body, const Json& messages, bool add_generation_prompt,
                        const std::string& bos_token, const std::string& eos_token, const Json& extra) {
  if (!messages.is_array()) throw Error("chat template: messages must be a JSON array");
  if (!extra.is_object()) throw Error("chat template: extra variables must be a JSON object");
  for (const auto& m : messages) {
    if (!m.is_object()) throw Error("chat template: every message must be a JSON object");
  }
  jinja::Map variables;
  // What transformers passes to render(): tools and documents default to None, and the
  // special tokens come from the tokenizer; extra keys may override any of them.
  variables.set("tools", jinja::Value::none());
  variables.set("documents", jinja::Value::none());
  variables.set("bos_token", jinja::Value(bos_token));
  variables.set("eos_token", jinja::Value(eos_token));
  for (auto it = extra.begin(); it != extra.end(); ++it) variables.set(it.key(), jinja::from_json(it.value()));
  variables.set("messages", jinja::from_json(messages));
  variables.set("add_generation_prompt", jinja::Value(add_generation_prompt));
  return jinja::render_template(body, variables, jinja::RenderLimits{});
}

}  // namespace

std::string ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt,
                                 const std::string& bos_token, const std::string& eos_token,
                                 const nlohmann::json& extra) const {
  return render_with(*body_, messages, add_generation_prompt, bos_token, eos_token, extra);
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 const std::string& bos_token, const std::string& eos_token,
                                 const nlohmann::ordered_json& extra) const {
  return render_with(*body_, messages, add_generation_prompt, bos_token, eos_token, extra);
}

const char* chatml_template() {
  return "{% for message in messages %}"
         "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
         "{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
}

}  // namespace fh1
