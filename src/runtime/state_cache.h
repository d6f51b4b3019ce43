// Saved sequence states (KV + conv + SSM), keyed by the tokens they have consumed, so that a
// request whose prompt extends an earlier one resumes from the snapshot instead of recomputing
// the shared prefix. The SSM state cannot be rewound, so a snapshot is only usable when its
// whole token sequence is a prefix of the new prompt: callers save snapshots at message
// boundaries (the end of a prompt, the end of a reply). Bounded in bytes, least recently used
// entries go first. Thread-safe.
#pragma once

#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "model/state.h"

namespace fh1 {

class StateCache {
 public:
  explicit StateCache(uint64_t max_bytes) : max_bytes_(max_bytes) {}

  struct Hit {
    SequenceState state;  // a copy: the entry stays in the cache
    int64_t tokens = 0;   // prompt tokens it already holds
  };
  // The longest saved state whose tokens are a proper prefix of `prompt` (at least one prompt
  // token is left to feed, whose logits start the reply).
  std::optional<Hit> lookup(std::span<const int32_t> prompt);

  // Saves a copy of `state`, which has consumed exactly `tokens`. Does nothing when the same
  // tokens are already saved (that entry becomes the most recent) or when it alone is too big.
  void insert(std::span<const int32_t> tokens, const SequenceState& state);

  struct Stats {
    uint64_t bytes = 0, max_bytes = 0, entries = 0;
    uint64_t hits = 0, misses = 0, insertions = 0, evictions = 0;
  };
  Stats stats() const;

 private:
  struct Entry {
    std::vector<int32_t> tokens;
    SequenceState state;
    uint64_t bytes = 0;
  };
  void evict_to(uint64_t budget);  // with mutex_ held

  uint64_t max_bytes_;
  mutable std::mutex mutex_;
  std::list<Entry> entries_;  // most recently used first
  Stats stats_;
};

}  // namespace fh1
