// Renders the chat_template of a model's tokenizer_config.json into the prompt text, the way
// transformers' apply_chat_template(..., tokenize=False) does.
//
// The engine implements the subset of Jinja2 that chat templates use (see README in this
// directory for the exact list). Anything outside it is an fh1::Error naming the construct and
// the line, raised when the template is constructed where possible, never a silently different
// prompt.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fh1 {

namespace jinja {
struct Stmt;
}

struct ChatMessage {
  std::string role;
  std::string content;
};

// The messages as the JSON array a template expects ([{role, content}, ...]). Messages with tool
// calls or other fields are passed as JSON directly.
nlohmann::ordered_json to_json_messages(const std::vector<ChatMessage>& messages);

class ChatTemplate {
 public:
  // Parses once; throws fh1::Error on a syntax error or an unsupported construct.
  explicit ChatTemplate(std::string source);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // messages: JSON array of {role, content, ...}. extra: further variables (tools, documents,
  // date_string, enable_thinking, ...); like transformers, `tools` and `documents` are none
  // unless given. Throws fh1::Error on render errors, including the template's own
  // raise_exception(...) (the message is kept in what()).
  //
  // nlohmann::json keeps object keys sorted, so tojson output lists keys alphabetically;
  // pass nlohmann::ordered_json to keep the order the keys arrived in, as Python does.
  std::string render(const nlohmann::json& messages, bool add_generation_prompt, const std::string& bos_token,
                     const std::string& eos_token, const nlohmann::json& extra = nlohmann::json::object()) const;
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const std::string& bos_token, const std::string& eos_token,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::unique_ptr<std::vector<std::unique_ptr<jinja::Stmt>>> body_;
};

// The template to use when a model ships none: ChatML (<|im_start|>role\ncontent<|im_end|>\n).
const char* chatml_template();

}  // namespace fh1
