#include "runtime/text_model.h"

#include <algorithm>

#include "io/json_file.h"
#include "util/error.h"

namespace fh1 {

TextModel TextModel::load(const std::filesystem::path& dir, const ModelConfig& config) {
  if (!std::filesystem::exists(dir / "tokenizer.json"))
    throw Error(dir.string() + ": no tokenizer.json, so text cannot be used with this model (use --ids)");
  Tokenizer tok = Tokenizer::from_dir(dir);
  const std::string& own = tok.chat_template();
  TextModel t(tok, ChatTemplate(own.empty() ? std::string(chatml_template()) : own));
  t.own_template_ = !own.empty();

  auto add_eos = [&](int32_t id) {
    if (id >= 0 && std::find(t.eos_ids_.begin(), t.eos_ids_.end(), id) == t.eos_ids_.end()) t.eos_ids_.push_back(id);
  };
  for (int id : config.eos_token_ids) add_eos(id);
  const auto gen_path = dir / "generation_config.json";
  if (std::filesystem::exists(gen_path)) {
    const nlohmann::json g = read_json_file(gen_path);
    if (g.contains("eos_token_id")) {
      const auto& e = g["eos_token_id"];
      if (e.is_number_integer()) add_eos(e.get<int32_t>());
      else if (e.is_array())
        for (const auto& v : e)
          if (v.is_number_integer()) add_eos(v.get<int32_t>());
    }
  }
  if (tok.eos_id()) add_eos(*tok.eos_id());
  if (tok.bos_id()) t.bos_token_ = tok.id_to_token(*tok.bos_id());
  if (tok.eos_id()) t.eos_token_ = tok.id_to_token(*tok.eos_id());
  return t;
}

std::string TextModel::render_chat(const nlohmann::ordered_json& messages, bool add_generation_prompt) const {
  return template_.render(messages, add_generation_prompt, bos_token_, eos_token_);
}

std::vector<int32_t> TextModel::encode_chat(const nlohmann::ordered_json& messages, bool add_generation_prompt) const {
  return tokenizer_.encode(render_chat(messages, add_generation_prompt), /*add_special_tokens=*/false);
}

}  // namespace fh1
