// Continuous batching: one thread owns the model and steps every running request together in
// one batched forward call. A new request joins between steps; a long prompt is fed in chunks
// (a per-step token budget), so it does not stall the replies already decoding; a cancelled
// request leaves its slot at the next step. Prompts that extend an earlier prompt or reply
// resume from a StateCache snapshot.
//
// The HTTP side talks to a request through GenerationRequest: it fills in the parameters,
// submits it, then reads tokens from it (wait_for) and may cancel it at any time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "model/model.h"
#include "runtime/sampler.h"
#include "runtime/state_cache.h"

namespace fh1 {

struct GenerationParams {
  std::vector<int32_t> prompt;
  int max_tokens = 16;  // >= 1; generation also ends when the context is full
  SamplingParams sampling;
  float presence_penalty = 0.0f, frequency_penalty = 0.0f;  // over the generated tokens
  int top_logprobs = -1;               // -1: no logprobs; else the chosen token's and this many best
  std::vector<int32_t> eos_ids;        // generating one ends the reply (finish "stop")
};

struct GeneratedToken {
  int32_t id = 0;
  float logprob = 0.0f;                           // when logprobs were asked for
  std::vector<std::pair<int32_t, float>> top;     // the best top_logprobs (id, logprob)
  bool is_eos = false;
};

struct GenerationResult {
  std::string finish_reason;  // "stop" (eos), "length", "cancelled", "error"
  std::string error;          // when finish_reason is "error"
  int64_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
  double queue_seconds = 0, first_token_seconds = 0, total_seconds = 0;  // since submit
};

// One request, shared by the HTTP thread that reads it and the scheduler thread that fills it.
class GenerationRequest {
 public:
  explicit GenerationRequest(GenerationParams params) : params_(std::move(params)) {}
  const GenerationParams& params() const { return params_; }

  // Reader side. Waits until there are new tokens or the end, at most `timeout`; moves new
  // tokens into `tokens` (appending) and returns the result once finished.
  std::optional<GenerationResult> wait_for(std::chrono::milliseconds timeout, std::vector<GeneratedToken>& tokens);
  // Stops the request; the scheduler frees its slot at its next step. Safe to call repeatedly.
  void cancel();
  bool cancelled() const;

  // Scheduler side.
  void push(GeneratedToken token);
  void finish(GenerationResult result);
  bool finished() const;

 private:
  GenerationParams params_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<GeneratedToken> pending_;
  std::optional<GenerationResult> result_;
  bool cancelled_ = false;
  friend class Scheduler;
  std::chrono::steady_clock::time_point submitted_;
};

struct SchedulerOptions {
  int parallel = 4;              // sequences decoded together
  int queue = 64;                // requests waiting for a slot
  int64_t step_tokens = 0;       // prompt tokens fed per step (all prefilling requests together); 0: the
                                 // default_step_tokens() of the model's backend
  int64_t context_length = 0;    // 0: the model's max_position_embeddings
  uint64_t cache_bytes = 256ull << 20;  // 0: no state cache
};

// A step's prompt budget where none is given: a quarter of the backend's preferred prompt chunk,
// from 256 to 2048 tokens (the CPU: 256; CUDA: 2048). Prompts then keep a GPU busy (7B, a 32K
// prompt in steps of 256 tokens: 3.0x the time of 32K-token calls on an H200; of 2048: 1.05x)
// while a step, which every decoding reply waits for, stays short (7B: ~90 ms at 2048 tokens).
int64_t default_step_tokens(const Kernels& kernels);

class Scheduler {
 public:
  Scheduler(const Model& model, SchedulerOptions options);
  ~Scheduler();  // shutdown()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  enum class Admission { accepted, queue_full, shutting_down, invalid };
  // Queues the request. `invalid`: an empty prompt, a token outside the vocabulary, or a prompt
  // that leaves no room in the context (the caller checks these first to give a precise error).
  Admission submit(const std::shared_ptr<GenerationRequest>& request);
  // Refuses new requests, ends running and queued ones (finish "error": shutting down), joins.
  void shutdown();
  int64_t context_length() const { return context_length_; }
  int64_t step_tokens() const { return options_.step_tokens; }

  struct Stats {
    int64_t running = 0, queued = 0, parallel = 0, queue_limit = 0;
    uint64_t steps = 0, batch_rows = 0, prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
    uint64_t finished = 0, cancelled = 0, errors = 0;
    double busy_seconds = 0;
    StateCache::Stats cache;
  };
  Stats stats() const;

 private:
  struct Slot;
  void run();
  void admit(std::deque<std::shared_ptr<GenerationRequest>>& incoming);
  void step();
  // From the row's logits, or (top not null) from what the backend computed of row `row`
  // (Model::forward_top with the sampler's row_needs()).
  void sample_into(Slot& slot, std::span<const float> logits, const Model::TopLogits* top, int64_t row);
  // The most candidates a step selects on the backend; a larger top-k takes the whole logits.
  static constexpr int kMaxTopCandidates = 256;
  static_assert(Sampler::kCutCandidates <= kMaxTopCandidates, "top-p / min-p candidates are selected on the backend");
  void release(Slot& slot, GenerationResult result, bool save_reply);

  const Model& model_;
  SchedulerOptions options_;
  int64_t context_length_;
  std::unique_ptr<StateCache> cache_;

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<GenerationRequest>> queue_;
  bool stopping_ = false;
  Stats stats_;  // counters, under mutex_

  std::vector<std::unique_ptr<Slot>> slots_;  // scheduler thread only
  std::thread thread_;
};

}  // namespace fh1
