#include "runtime/state_cache.h"

#include <algorithm>

namespace fh1 {

std::optional<StateCache::Hit> StateCache::lookup(std::span<const int32_t> prompt) {
  std::lock_guard lock(mutex_);
  auto best = entries_.end();
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    const auto& t = it->tokens;
    if (t.size() >= prompt.size()) continue;
    if (best != entries_.end() && t.size() <= best->tokens.size()) continue;
    if (std::equal(t.begin(), t.end(), prompt.begin())) best = it;
  }
  if (best == entries_.end()) {
    ++stats_.misses;
    return std::nullopt;
  }
  ++stats_.hits;
  entries_.splice(entries_.begin(), entries_, best);
  return Hit{best->state.clone(), static_cast<int64_t>(best->tokens.size())};
}

void StateCache::insert(std::span<const int32_t> tokens, const SequenceState& state) {
  if (tokens.empty() || state.n_past() != static_cast<int64_t>(tokens.size())) return;
  std::lock_guard lock(mutex_);
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->tokens.size() == tokens.size() && std::equal(tokens.begin(), tokens.end(), it->tokens.begin())) {
      entries_.splice(entries_.begin(), entries_, it);
      return;
    }
  }
  // What the saved copy holds (a clone has exactly n_past KV rows, in the backend's KV type).
  SequenceState copy = state.clone();
  const uint64_t bytes = copy.memory_bytes();
  if (bytes > max_bytes_) return;
  evict_to(max_bytes_ - bytes);
  entries_.push_front(Entry{std::vector<int32_t>(tokens.begin(), tokens.end()), std::move(copy), bytes});
  stats_.bytes += bytes;
  ++stats_.entries;
  ++stats_.insertions;
}

void StateCache::evict_to(uint64_t budget) {
  while (stats_.bytes > budget && !entries_.empty()) {
    stats_.bytes -= entries_.back().bytes;
    --stats_.entries;
    ++stats_.evictions;
    entries_.pop_back();
  }
}

StateCache::Stats StateCache::stats() const {
  std::lock_guard lock(mutex_);
  Stats s = stats_;
  s.max_bytes = max_bytes_;
  return s;
}

}  // namespace fh1
