#include "tokenizer/bpe_model.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <queue>

#include "tokenizer/json_util.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace fh1 {
namespace {

using json = nlohmann::json;

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

std::optional<std::string> optional_string(const json& spec, const char* key) {
  auto it = spec.find(key);
  if (it == spec.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) throw fh1::mismatch(std::string("tokenizer.json: model.") + key, "a string",
                                       it->type_name());
  return it->get<std::string>();
}

// One symbol of the word being merged: a doubly linked list over a vector, as in HF's Word.
struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  uint32_t len;  // bytes of the original piece it covers; 0 once merged into its left neighbour
};

struct MergeCandidate {
  int32_t rank;
  int32_t pos;
  int32_t new_id;
  // priority_queue pops the largest: make the lowest (rank, pos) the largest.
  bool operator<(const MergeCandidate& o) const {
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

}  // namespace

BpeModel::BpeModel(const json& spec) {
  const std::string type = spec.is_object() && spec.contains("type") && spec["type"].is_string()
                               ? spec["type"].get<std::string>()
                               : "BPE";  // old files omit the type of a BPE model
  if (type != "BPE") {
    throw Error("tokenizer.json: unsupported model type '" + type + "' (supported: BPE)");
  }
  const json& vocab = json_util::get_field(spec, "vocab", "model");
  if (!vocab.is_object()) throw fh1::mismatch("tokenizer.json: model.vocab", "an object", vocab.type_name());
  vocab_.reserve(vocab.size());
  for (const auto& [token, id_json] : vocab.items()) {
    if (!id_json.is_number_integer() || id_json.get<int64_t>() < 0 ||
        id_json.get<int64_t>() > (1 << 30)) {
      throw fh1::mismatch("tokenizer.json: model.vocab[\"" + token + "\"]", "a non-negative id",
                     id_json.dump());
    }
    const auto id = id_json.get<int32_t>();
    vocab_[token] = id;
    if (static_cast<size_t>(id) >= id_to_token_.size()) {
      id_to_token_.resize(id + 1);
      id_used_.resize(id + 1, false);
    }
    id_to_token_[id] = token;
    id_used_[id] = true;
  }

  const json& dropout = spec.contains("dropout") ? spec["dropout"] : json();
  if (!dropout.is_null() && !(dropout.is_number() && dropout.get<double>() == 0.0)) {
    // Dropout only matters for training; inference in HF also uses it when set, which would make
    // encoding random. We refuse rather than silently differ.
    throw Error("tokenizer.json: model.dropout " + dropout.dump() + " is not supported (only null)");
  }
  if (auto unk = optional_string(spec, "unk_token")) {
    auto it = vocab_.find(*unk);
    if (it == vocab_.end()) throw Error("tokenizer.json: model.unk_token '" + *unk + "' is not in the vocab");
    unk_id_ = it->second;
  }
  continuing_subword_prefix_ = optional_string(spec, "continuing_subword_prefix").value_or("");
  end_of_word_suffix_ = optional_string(spec, "end_of_word_suffix").value_or("");
  fuse_unk_ = json_util::get_bool_or(spec, "fuse_unk", false, "model");
  byte_fallback_ = json_util::get_bool_or(spec, "byte_fallback", false, "model");
  ignore_merges_ = json_util::get_bool_or(spec, "ignore_merges", false, "model");
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto it = vocab_.find(std::string_view(name));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }

  const json& merges = spec.contains("merges") ? spec["merges"] : json::array();
  if (!merges.is_array()) throw fh1::mismatch("tokenizer.json: model.merges", "an array", merges.type_name());
  merges_.reserve(merges.size());
  int32_t rank = 0;
  for (const auto& merge : merges) {
    std::string left, right;
    if (merge.is_string()) {  // "a b"
      const std::string line = merge.get<std::string>();
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        throw fh1::mismatch("tokenizer.json: model.merges[" + std::to_string(rank) + "]",
                       "\"left right\"", "\"" + line + "\"");
      }
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      left = merge[0].get<std::string>();  // ["a", "b"], the newer format
      right = merge[1].get<std::string>();
    } else {
      throw fh1::mismatch("tokenizer.json: model.merges[" + std::to_string(rank) + "]",
                     "\"left right\" or [left, right]", merge.dump());
    }
    auto l = vocab_.find(left), r = vocab_.find(right);
    // HF drops the continuing-subword prefix of the right part (by length) when naming the merge.
    const std::string merged =
        left + right.substr(std::min(right.size(), continuing_subword_prefix_.size()));
    auto m = vocab_.find(merged);
    if (l == vocab_.end() || r == vocab_.end() || m == vocab_.end()) {
      throw Error("tokenizer.json: model.merges[" + std::to_string(rank) + "] ('" + left + "', '" +
                  right + "') uses a token that is not in the vocab");
    }
    merges_[pair_key(l->second, r->second)] = {rank, m->second};
    ++rank;
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_used_[id]) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(piece); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (auto it = cache_.find(piece); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(piece, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(piece), std::move(ids));
  }
}

void BpeModel::merge_word(std::string_view piece, std::vector<int32_t>& out) const {
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  auto add = [&symbols](int32_t id, uint32_t len) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (index > 0) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, len});
  };

  // Initial symbols: one per character (with prefix/suffix), byte fallback, or unk.
  // An unk waiting to be added, so that consecutive unks can be fused (HF keeps the same state).
  bool has_pending_unk = false;
  uint32_t pending_unk_len = 0;
  std::string key;
  for (size_t pos = 0; pos < piece.size();) {
    const size_t begin = pos;
    pos += unicode::utf8_char_len(static_cast<unsigned char>(piece[pos]));
    if (pos > piece.size()) pos = piece.size();
    const auto byte_len = static_cast<uint32_t>(pos - begin);
    key.clear();
    if (begin > 0) key += continuing_subword_prefix_;
    key.append(piece.substr(begin, byte_len));
    if (pos == piece.size()) key += end_of_word_suffix_;
    if (auto it = vocab_.find(key); it != vocab_.end()) {
      if (has_pending_unk) {
        add(*unk_id_, pending_unk_len);
        has_pending_unk = false;
      }
      add(it->second, byte_len);
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes = true;
      for (unsigned char b : key) all_bytes = all_bytes && byte_ids_[b] >= 0;
      if (all_bytes) {
        // HF adds the byte tokens without flushing a pending unk first; keep that order.
        for (unsigned char b : key) add(byte_ids_[b], 1);
        continue;
      }
    }
    if (unk_id_) {
      if (has_pending_unk && fuse_unk_) {
        pending_unk_len += byte_len;
      } else {
        if (has_pending_unk) add(*unk_id_, pending_unk_len);
        has_pending_unk = true;
        pending_unk_len = byte_len;
      }
    }
    // Without an unk token HF drops the character silently; so do we.
  }
  if (has_pending_unk) add(*unk_id_, pending_unk_len);

  // Merge loop: always apply the lowest-ranked merge, leftmost first (HF Word::merge_all).
  std::priority_queue<MergeCandidate> queue;
  auto lookup = [this](int32_t left, int32_t right) -> const std::pair<int32_t, int32_t>* {
    auto it = merges_.find(pair_key(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const auto* m = lookup(symbols[i].id, symbols[i + 1].id))
      queue.push({m->first, static_cast<int32_t>(i), m->second});
  }
  while (!queue.empty()) {
    const MergeCandidate top = queue.top();
    queue.pop();
    Symbol& current = symbols[top.pos];
    if (current.len == 0 || current.next == -1) continue;
    const int32_t next_pos = current.next;
    const Symbol right = symbols[next_pos];
    const auto* still = lookup(current.id, right.id);
    if (still == nullptr || still->second != top.new_id) continue;  // stale entry
    current.id = top.new_id;
    current.len += right.len;
    current.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (current.prev >= 0) {
      if (const auto* m = lookup(symbols[current.prev].id, current.id))
        queue.push({m->first, current.prev, m->second});
    }
    if (current.next >= 0) {
      if (const auto* m = lookup(current.id, symbols[current.next].id))
        queue.push({m->first, top.pos, m->second});
    }
  }
  for (const auto& s : symbols)
    if (s.len != 0) out.push_back(s.id);
}

}  // namespace fh1
