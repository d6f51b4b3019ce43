// Loading tokenizer.json and its side files, and the encode / decode pipelines:
//   encode: added tokens (raw) -> normalizer -> added tokens (normalized) -> pre-tokenizer -> BPE
//           -> post-processor (special tokens such as bos)
//   decode: ids -> token strings (minus skipped specials) -> decoder chain -> text
#include "tokenizer/tokenizer.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "tokenizer/added_vocabulary.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/decoder.h"
#include "tokenizer/json_util.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace fh1 {

using json = nlohmann::json;

// What the post-processor adds around a single sequence when add_special_tokens is true.
struct SpecialTokenWrap {
  std::vector<int32_t> before, after;
};

struct Tokenizer::Impl {
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<Decoder> decoder;
  AddedVocabulary added;
  SpecialTokenWrap wrap;
  bool has_post_processor = false;
  std::optional<int32_t> bos, eos;
  std::string chat_template;

  std::optional<int32_t> lookup(std::string_view token) const {
    if (auto id = added.find_by_content(token)) return id;
    return model->token_to_id(token);
  }
  void encode_text(std::string_view text, bool at_origin, std::vector<int32_t>& out) const;
};

namespace {

json parse_json_text(const std::string& text, const std::string& what) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(what + ": invalid JSON: " + e.what());
  }
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path.string());
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Parses the post_processor into the ids it puts around one sequence.
void parse_post_processor(const json& spec, SpecialTokenWrap& wrap) {
  const std::string type = json_util::get_type(spec, "post_processor");
  const std::string where = "post_processor " + type;
  if (type == "ByteLevel") return;  // only adjusts offsets, which we do not produce
  if (type == "Sequence") {
    for (const auto& step : json_util::get_array(spec, "processors", where)) {
      SpecialTokenWrap inner;
      parse_post_processor(step, inner);
      // A later processor wraps the output of the earlier ones.
      inner.before.insert(inner.before.end(), wrap.before.begin(), wrap.before.end());
      wrap.after.insert(wrap.after.end(), inner.after.begin(), inner.after.end());
      wrap.before = std::move(inner.before);
    }
    return;
  }
  if (type == "TemplateProcessing") {
    const json& specials = spec.contains("special_tokens") ? spec["special_tokens"] : json::object();
    bool seen_sequence = false;
    for (const auto& piece : json_util::get_array(spec, "single", where)) {
      if (piece.contains("Sequence")) {
        seen_sequence = true;
      } else if (piece.contains("SpecialToken")) {
        const std::string name = json_util::get_string(piece["SpecialToken"], "id", where);
        if (!specials.contains(name)) {
          throw Error("tokenizer.json: " + where + ": special token '" + name +
                      "' missing from special_tokens");
        }
        for (const auto& id : json_util::get_array(specials[name], "ids", where)) {
          (seen_sequence ? wrap.after : wrap.before).push_back(id.get<int32_t>());
        }
      } else {
        throw fh1::mismatch("tokenizer.json: " + where + ".single[]", "Sequence or SpecialToken",
                       piece.dump());
      }
    }
    return;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    const auto& cls = json_util::get_array(spec, "cls", where);
    const auto& sep = json_util::get_array(spec, "sep", where);
    if (cls.size() != 2 || sep.size() != 2) throw Error("tokenizer.json: " + where + ": bad cls/sep");
    wrap.before.push_back(cls[1].get<int32_t>());
    wrap.after.push_back(sep[1].get<int32_t>());
    return;
  }
  throw Error("tokenizer.json: unsupported post_processor type '" + type +
              "' (supported: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, "
              "Sequence)");
}

std::shared_ptr<Tokenizer::Impl> build_impl(const std::string& tokenizer_json) {
  const json root = parse_json_text(tokenizer_json, "tokenizer.json");
  if (!root.is_object()) throw fh1::mismatch("tokenizer.json", "an object", root.type_name());
  try {
    auto impl = std::make_shared<Tokenizer::Impl>();
    auto field = [&root](const char* key) { return root.contains(key) ? root[key] : json(); };
    if (!root.contains("model")) throw Error("tokenizer.json: missing field 'model'");
    if (root.contains("truncation") && !root["truncation"].is_null()) {
      // Truncation needs a max length from the caller; we never truncate silently, and inference
      // does not want it, so it is ignored on purpose (padding likewise).
    }
    impl->normalizer = parse_normalizer(field("normalizer"));
    impl->pre_tokenizer = parse_pre_tokenizer(field("pre_tokenizer"));
    impl->model = std::make_unique<BpeModel>(root["model"]);
    impl->decoder = parse_decoder(field("decoder"));
    impl->added = AddedVocabulary(field("added_tokens"), impl->normalizer.get());
    if (!field("post_processor").is_null()) {
      parse_post_processor(root["post_processor"], impl->wrap);
      impl->has_post_processor = true;
    }
    return impl;
  } catch (const json::exception& e) {
    // A field of an unexpected JSON type deep inside a component.
    throw Error(std::string("tokenizer.json: malformed field: ") + e.what());
  }
}

// "bos_token": "<s>" or {"content": "<s>", ...}
std::optional<std::string> special_token_text(const json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return std::nullopt;
  const json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return std::nullopt;
}

std::string pick_chat_template(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_array()) {  // [{"name": ..., "template": ...}]: "default", else the first
    for (const auto& entry : value) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template"))
        return entry["template"].get<std::string>();
    }
    if (!value.empty() && value[0].is_object() && value[0].contains("template"))
      return value[0]["template"].get<std::string>();
  }
  return "";
}

}  // namespace

void Tokenizer::Impl::encode_text(std::string_view text, bool at_origin,
                                  std::vector<int32_t>& out) const {
  std::string normalized = normalizer ? normalizer->normalize(std::string(text)) : std::string(text);
  std::vector<Segment> segments;
  if (added.has_normalized_tokens()) {
    segments = added.split(normalized, /*normalized_tokens=*/true);
  } else if (!normalized.empty()) {
    segments.push_back({-1, 0, normalized.size()});
  }
  for (const auto& seg : segments) {
    if (seg.id >= 0) {
      out.push_back(seg.id);
      continue;
    }
    std::vector<Piece> pieces;
    pieces.push_back({normalized.substr(seg.begin, seg.end - seg.begin), at_origin && seg.begin == 0});
    if (pre_tokenizer) pre_tokenizer->pre_tokenize(pieces);
    for (const auto& piece : pieces) model->encode_piece(piece.text, out);
  }
}

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json) {
  return Tokenizer(build_impl(tokenizer_json));
}

// tokenizer_config.json, special_tokens_map.json, chat_template.jinja / .json
static void apply_side_files(const std::filesystem::path& dir, Tokenizer::Impl* impl) {
  json config = json::object(), special_map = json::object();
  if (std::filesystem::is_regular_file(dir / "tokenizer_config.json"))
    config = parse_json_text(read_file(dir / "tokenizer_config.json"), "tokenizer_config.json");
  if (std::filesystem::is_regular_file(dir / "special_tokens_map.json"))
    special_map = parse_json_text(read_file(dir / "special_tokens_map.json"), "special_tokens_map.json");

  auto resolve = [&](const char* key) -> std::optional<int32_t> {
    auto text = special_token_text(config, key);
    if (!text) text = special_token_text(special_map, key);
    if (!text) return std::nullopt;
    auto id = impl->lookup(*text);
    if (!id) throw Error("tokenizer_config.json: " + std::string(key) + " '" + *text + "' is not in the vocabulary");
    return id;
  };
  impl->bos = resolve("bos_token");
  impl->eos = resolve("eos_token");

  if (config.is_object() && config.contains("chat_template")) {
    impl->chat_template = pick_chat_template(config["chat_template"]);
  }
  if (impl->chat_template.empty() && std::filesystem::is_regular_file(dir / "chat_template.jinja")) {
    impl->chat_template = read_file(dir / "chat_template.jinja");
  }
  if (impl->chat_template.empty() && std::filesystem::is_regular_file(dir / "chat_template.json")) {
    const json ct = parse_json_text(read_file(dir / "chat_template.json"), "chat_template.json");
    if (ct.is_object() && ct.contains("chat_template")) impl->chat_template = pick_chat_template(ct["chat_template"]);
  }

  // The post-processor of tokenizer.json decides which special tokens encode adds, as in HF.
  // Only when there is none do we honour tokenizer_config's add_bos_token / add_eos_token (what
  // transformers' slow-tokenizer-style classes would do).
  if (!impl->has_post_processor && config.is_object()) {
    if (json_util::get_bool_or(config, "add_bos_token", false, "tokenizer_config") && impl->bos)
      impl->wrap.before.push_back(*impl->bos);
    if (json_util::get_bool_or(config, "add_eos_token", false, "tokenizer_config") && impl->eos)
      impl->wrap.after.push_back(*impl->eos);
  }
}

Tokenizer Tokenizer::from_dir(const std::filesystem::path& dir) {
  const auto tokenizer_path = dir / "tokenizer.json";
  if (!std::filesystem::is_regular_file(tokenizer_path)) {
    throw Error("no tokenizer.json in " + dir.string() +
                " (only Hugging Face tokenizer.json files are supported)");
  }
  std::shared_ptr<Impl> impl;
  try {
    impl = build_impl(read_file(tokenizer_path));
  } catch (const Error& e) {  // the messages name "tokenizer.json": say which one
    const std::string m = e.what(), name = "tokenizer.json";
    throw Error(m.compare(0, name.size(), name) == 0 ? tokenizer_path.string() + m.substr(name.size())
                                                     : tokenizer_path.string() + ": " + m);
  }
  try {
    apply_side_files(dir, impl.get());
  } catch (const json::exception& e) {
    throw Error("tokenizer side files in " + dir.string() + ": malformed field: " + e.what());
  }
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const std::string valid = unicode::to_valid_utf8(text);
  std::vector<int32_t> ids;
  ids.reserve(valid.size() / 3 + 8);
  if (add_special_tokens) ids = impl_->wrap.before;
  for (const auto& seg : impl_->added.split(valid, /*normalized_tokens=*/false)) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
    } else {
      impl_->encode_text(std::string_view(valid).substr(seg.begin, seg.end - seg.begin),
                         seg.begin == 0, ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), impl_->wrap.after.begin(), impl_->wrap.after.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const AddedToken* added = impl_->added.find_by_id(id)) {
      if (skip_special_tokens && added->special) continue;
      tokens.push_back(added->content);
    } else if (const std::string* token = impl_->model->id_to_token(id)) {
      tokens.push_back(*token);
    }  // unknown ids are dropped, as HF does
  }
  if (!impl_->decoder) {
    std::string joined;  // HF joins with spaces when there is no decoder
    for (size_t i = 0; i < tokens.size(); ++i) joined += (i ? " " : "") + tokens[i];
    return unicode::to_valid_utf8(joined);
  }
  std::string text;
  for (const auto& part : impl_->decoder->decode_chain(std::move(tokens))) text += part;
  return unicode::to_valid_utf8(text);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* added = impl_->added.find_by_id(id)) return added->content;
  if (const std::string* token = impl_->model->id_to_token(id)) return *token;
  return "";
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  return impl_->lookup(token);
}

size_t Tokenizer::vocab_size() const {
  return static_cast<size_t>(std::max(impl_->model->max_id(), impl_->added.max_id()) + 1);
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }
const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }

bool Tokenizer::is_special(int32_t id) const {
  const AddedToken* added = impl_->added.find_by_id(id);
  return added != nullptr && added->special;
}

// ---- StreamDecoder: HF's DecodeStream algorithm ----

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  window_.push_back(id);
  const std::string text = tokenizer_.decode(window_, skip_special_);
  // A trailing U+FFFD may be a character whose remaining bytes are still to come: wait.
  const bool maybe_incomplete =
      text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
  if (text.size() <= prefix_text_.size() || maybe_incomplete) return "";
  if (text.compare(0, prefix_text_.size(), prefix_text_) != 0) {
    // The new id changed already-emitted text (a context-dependent decoder): keep the window and
    // let flush() sort it out rather than emit inconsistent text.
    return "";
  }
  std::string fresh = text.substr(prefix_text_.size());
  // Keep the ids since the previous emission as context for the next decode.
  window_.erase(window_.begin(), window_.begin() + static_cast<std::ptrdiff_t>(prefix_ids_));
  prefix_ids_ = window_.size();
  prefix_text_ = tokenizer_.decode(window_, skip_special_);
  return fresh;
}

std::string StreamDecoder::flush() {
  const std::string text = tokenizer_.decode(window_, skip_special_);
  std::string rest;
  if (text.size() > prefix_text_.size() && text.compare(0, prefix_text_.size(), prefix_text_) == 0)
    rest = text.substr(prefix_text_.size());
  window_.clear();
  prefix_ids_ = 0;
  prefix_text_.clear();
  return rest;
}

}  // namespace fh1
