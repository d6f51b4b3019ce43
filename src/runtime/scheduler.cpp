#include "runtime/scheduler.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <unordered_map>

#include "util/error.h"

namespace fh1 {

using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// log_softmax(logits)[id] and the `k` most likely tokens (best first).
void fill_logprobs(std::span<const float> logits, int k, GeneratedToken& out) {
  float top = logits[0];
  for (float v : logits) top = std::max(top, v);
  double sum = 0.0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - top);
  const double log_z = top + std::log(sum);
  out.logprob = static_cast<float>(logits[static_cast<size_t>(out.id)] - log_z);
  if (k <= 0) return;
  std::vector<int32_t> idx(logits.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int32_t>(i);
  const size_t n = std::min(idx.size(), static_cast<size_t>(k));
  std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(n), idx.end(), [&](int32_t a, int32_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
           (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
  });
  for (size_t i = 0; i < n; ++i)
    out.top.emplace_back(idx[i], static_cast<float>(logits[static_cast<size_t>(idx[i])] - log_z));
}

}  // namespace

// ---- GenerationRequest ----

std::optional<GenerationResult> GenerationRequest::wait_for(std::chrono::milliseconds timeout,
                                                            std::vector<GeneratedToken>& tokens) {
  std::unique_lock lock(mutex_);
  cv_.wait_for(lock, timeout, [&] { return !pending_.empty() || result_.has_value(); });
  for (auto& t : pending_) tokens.push_back(std::move(t));
  pending_.clear();
  return result_;
}

void GenerationRequest::cancel() {
  std::lock_guard lock(mutex_);
  cancelled_ = true;
}

bool GenerationRequest::cancelled() const {
  std::lock_guard lock(mutex_);
  return cancelled_;
}

void GenerationRequest::push(GeneratedToken token) {
  {
    std::lock_guard lock(mutex_);
    pending_.push_back(std::move(token));
  }
  cv_.notify_all();
}

void GenerationRequest::finish(GenerationResult result) {
  {
    std::lock_guard lock(mutex_);
    if (result_) return;
    result.total_seconds = seconds_since(submitted_);
    result_ = std::move(result);
  }
  cv_.notify_all();
}

bool GenerationRequest::finished() const {
  std::lock_guard lock(mutex_);
  return result_.has_value();
}

// ---- Scheduler ----

struct Scheduler::Slot {
  Slot(std::shared_ptr<GenerationRequest> r, SequenceState s, int64_t cached_tokens)
      : request(std::move(r)), state(std::move(s)), fed(cached_tokens), cached(cached_tokens),
        sampler(request->params().sampling) {}
  std::shared_ptr<GenerationRequest> request;
  SequenceState state;
  int64_t fed = 0;     // prompt tokens in the state
  int64_t cached = 0;  // of which restored from the cache
  std::vector<int32_t> generated;
  int32_t next_input = -1;  // sampled, fed at the next step (-1 while the prompt is being fed)
  Sampler sampler;
  std::unordered_map<int32_t, int> counts;  // generated token -> occurrences (penalties)
  double first_token_seconds = 0;

  const std::vector<int32_t>& prompt() const { return request->params().prompt; }
};

int64_t default_step_tokens(const Kernels& kernels) {
  return std::clamp<int64_t>(kernels.preferred_prompt_chunk() / 4, 256, 2048);
}

Scheduler::Scheduler(const Model& model, SchedulerOptions options)
    : model_(model),
      options_(options),
      context_length_(options.context_length > 0 ? options.context_length
                                                 : model.config().max_position_embeddings) {
  options_.parallel = std::max(1, options_.parallel);
  options_.queue = std::max(0, options_.queue);
  if (options_.step_tokens <= 0) options_.step_tokens = default_step_tokens(model.kernels());
  if (options_.cache_bytes > 0) cache_ = std::make_unique<StateCache>(options_.cache_bytes);
  stats_.parallel = options_.parallel;
  stats_.queue_limit = options_.queue;
  thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() { shutdown(); }

Scheduler::Admission Scheduler::submit(const std::shared_ptr<GenerationRequest>& request) {
  const auto& p = request->params();
  if (p.prompt.empty() || static_cast<int64_t>(p.prompt.size()) >= context_length_ || p.max_tokens < 1)
    return Admission::invalid;
  for (int32_t id : p.prompt)
    if (id < 0 || id >= model_.config().vocab_size) return Admission::invalid;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return Admission::shutting_down;
    const int64_t free_slots = options_.parallel - stats_.running;
    if (static_cast<int64_t>(queue_.size()) >= options_.queue + std::max<int64_t>(0, free_slots))
      return Admission::queue_full;
    request->submitted_ = Clock::now();
    queue_.push_back(request);
    stats_.queued = static_cast<int64_t>(queue_.size());
  }
  cv_.notify_all();
  return Admission::accepted;
}

void Scheduler::shutdown() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Scheduler::Stats Scheduler::stats() const {
  std::lock_guard lock(mutex_);
  Stats s = stats_;
  if (cache_) s.cache = cache_->stats();
  return s;
}

void Scheduler::run() {
  for (;;) {
    std::deque<std::shared_ptr<GenerationRequest>> incoming;
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [&] { return stopping_ || !slots_.empty() || !queue_.empty(); });
      if (stopping_) break;
      for (auto it = queue_.begin(); it != queue_.end();) {  // drop requests cancelled while queued
        if ((*it)->cancelled()) {
          (*it)->finish(GenerationResult{"cancelled", "", static_cast<int64_t>((*it)->params().prompt.size())});
          ++stats_.cancelled;
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
      while (!queue_.empty() && slots_.size() + incoming.size() < static_cast<size_t>(options_.parallel)) {
        incoming.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      stats_.queued = static_cast<int64_t>(queue_.size());
      stats_.running = static_cast<int64_t>(slots_.size() + incoming.size());
    }
    admit(incoming);
    for (size_t i = 0; i < slots_.size();) {
      if (slots_[i]->request->cancelled()) {
        release(*slots_[i], GenerationResult{"cancelled", ""}, false);
        slots_.erase(slots_.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
    {
      std::lock_guard lock(mutex_);
      stats_.running = static_cast<int64_t>(slots_.size());
    }
    if (!slots_.empty()) step();
  }
  // Shutting down: everything still here ends with an error.
  GenerationResult bye{"error", "the server is shutting down"};
  for (auto& s : slots_) release(*s, bye, false);
  slots_.clear();
  std::lock_guard lock(mutex_);
  for (auto& r : queue_) r->finish(bye);
  queue_.clear();
  stats_.running = stats_.queued = 0;
}

void Scheduler::admit(std::deque<std::shared_ptr<GenerationRequest>>& incoming) {
  for (auto& r : incoming) {
    const auto& prompt = r->params().prompt;
    try {
      std::optional<StateCache::Hit> hit;
      if (cache_) hit = cache_->lookup(prompt);
      const int64_t cached = hit ? hit->tokens : 0;
      SequenceState state = hit ? std::move(hit->state)
                                : model_.new_state(static_cast<int64_t>(prompt.size()) + 64);
      slots_.push_back(std::make_unique<Slot>(r, std::move(state), cached));
      std::lock_guard lock(mutex_);
      stats_.cached_tokens += static_cast<uint64_t>(cached);
      stats_.prompt_tokens += prompt.size();
    } catch (const std::exception& e) {  // bad sampling parameters, out of memory
      r->finish(GenerationResult{"error", e.what(), static_cast<int64_t>(prompt.size())});
      std::lock_guard lock(mutex_);
      ++stats_.errors;
    }
  }
  incoming.clear();
}

void Scheduler::step() {
  // Every decoding slot feeds its last token; prompts share a budget of step_tokens.
  std::vector<BatchItem> batch;
  std::vector<Slot*> owners;
  std::vector<int64_t> fed_now;
  int64_t budget = options_.step_tokens;
  for (auto& s : slots_) {
    if (s->next_input >= 0) {
      batch.push_back({&s->state, std::span<const int32_t>(&s->next_input, 1), false});
      fed_now.push_back(0);
    } else {
      if (budget <= 0) continue;
      const int64_t n = std::min(static_cast<int64_t>(s->prompt().size()) - s->fed, budget);
      budget -= n;
      batch.push_back({&s->state, std::span<const int32_t>(s->prompt()).subspan(static_cast<size_t>(s->fed),
                                                                                static_cast<size_t>(n)),
                       false});
      fed_now.push_back(n);
    }
    owners.push_back(s.get());
  }
  // A draw needs only the best few logits of a row and, without top-k, the softmax sum or
  // (temperature alone) the draw itself (Sampler::row_needs); penalties lower the logits of the
  // tokens generated so far first, and logprobs need the row's normalizer and best few before
  // that: the backend computes all of it where the logits are (on a GPU no vocabulary-sized
  // copy). Only a top-k beyond kMaxTopCandidates brings every row's logits to the host.
  std::vector<Sampler::RowNeeds> needs(owners.size());
  bool few = true, sums = false, lower = false, logprobs = false;
  int k = 0;
  for (size_t i = 0; i < owners.size(); ++i) {
    const GenerationParams& p = owners[i]->request->params();
    needs[i] = owners[i]->sampler.row_needs();
    few = few && needs[i].k <= kMaxTopCandidates;
    k = std::max(k, needs[i].k);
    sums = sums || needs[i].inv_t > 0.0;
    lower = lower || ((p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) && !owners[i]->counts.empty());
    logprobs = logprobs || p.top_logprobs >= 0;
  }
  Model::TopRequest req;
  if (few) {
    req.k = k;
    if (sums) {
      req.inv_t.assign(owners.size(), 0.0);
      req.u.assign(owners.size(), -1.0);
    }
    if (lower) req.lower.resize(owners.size());
    if (logprobs) req.logprobs.assign(owners.size(), -1);
    for (size_t i = 0; i < owners.size(); ++i) {
      Slot& s = *owners[i];
      const GenerationParams& p = s.request->params();
      // A prompt not finished in this step draws nothing: its uniform stays in the stream.
      const bool draws = fed_now[i] == 0 || s.fed + fed_now[i] >= static_cast<int64_t>(s.prompt().size());
      if (sums) {
        req.inv_t[i] = needs[i].inv_t;
        if (needs[i].in_order && draws) req.u[i] = s.sampler.take_order_uniform();
      }
      if (lower && draws && (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f))
        for (const auto& [id, n] : s.counts)
          req.lower[i].emplace_back(id, p.presence_penalty + p.frequency_penalty * static_cast<float>(n));
      if (logprobs && draws) req.logprobs[i] = p.top_logprobs;
    }
  }
  const auto t0 = Clock::now();
  std::vector<float> logits;
  Model::TopLogits top;
  try {
    if (few) top = model_.forward_top(batch, req);
    else logits = model_.forward(batch);
  } catch (const std::exception& e) {
    for (Slot* s : owners) {
      release(*s, GenerationResult{"error", std::string("forward failed: ") + e.what()}, false);
      s->request.reset();
    }
    std::erase_if(slots_, [](const auto& s) { return !s->request; });
    return;
  }
  {
    std::lock_guard lock(mutex_);
    ++stats_.steps;
    stats_.batch_rows += batch.size();
    stats_.busy_seconds += seconds_since(t0);
  }
  const size_t V = static_cast<size_t>(model_.config().vocab_size);
  for (size_t i = 0; i < owners.size(); ++i) {
    Slot& s = *owners[i];
    if (fed_now[i] > 0) {
      s.fed += fed_now[i];
      if (s.fed < static_cast<int64_t>(s.prompt().size())) continue;
      if (cache_) cache_->insert(s.prompt(), s.state);  // a snapshot at the end of the prompt
    }
    if (few)
      sample_into(s, {}, &top, static_cast<int64_t>(i));
    else
      sample_into(s, std::span<const float>(logits.data() + i * V, V), nullptr, 0);
  }
  std::erase_if(slots_, [](const auto& s) { return !s->request; });
}

void Scheduler::sample_into(Slot& s, std::span<const float> logits, const Model::TopLogits* top, int64_t row) {
  const GenerationParams& p = s.request->params();
  GeneratedToken tok;
  if (top != nullptr) {  // what the backend computed of the row (penalties applied there)
    const size_t K = static_cast<size_t>(top->k), r = static_cast<size_t>(row);
    tok.id = s.sampler.sample_needs(std::span<const int32_t>(top->ids).subspan(r * K, K),
                                    std::span<const float>(top->values).subspan(r * K, K),
                                    top->sums.empty() ? 0.0 : top->sums[r], top->drawn.empty() ? -1 : top->drawn[r],
                                    static_cast<size_t>(model_.config().vocab_size), [&] { return top->row(row); });
    if (p.top_logprobs >= 0) {  // as fill_logprobs computes them from the whole row
      const double log_z = top->log_z[r];
      tok.logprob = static_cast<float>(top->raw(row, tok.id) - log_z);
      const size_t L = static_cast<size_t>(top->lp_k), n = std::min(L, static_cast<size_t>(p.top_logprobs));
      for (size_t j = 0; j < n; ++j)
        tok.top.emplace_back(top->lp_ids[r * L + j], static_cast<float>(top->lp_values[r * L + j] - log_z));
    }
  } else if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    std::vector<float> adjusted(logits.begin(), logits.end());
    for (const auto& [id, n] : s.counts)
      adjusted[static_cast<size_t>(id)] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(n);
    tok.id = s.sampler.sample(adjusted);
  } else {
    tok.id = s.sampler.sample(logits);
  }
  if (top == nullptr && p.top_logprobs >= 0) fill_logprobs(logits, p.top_logprobs, tok);
  tok.is_eos = std::find(p.eos_ids.begin(), p.eos_ids.end(), tok.id) != p.eos_ids.end();
  if (s.generated.empty()) s.first_token_seconds = seconds_since(s.request->submitted_);
  s.generated.push_back(tok.id);
  ++s.counts[tok.id];
  const bool eos = tok.is_eos;
  s.request->push(std::move(tok));

  const bool full = s.state.n_past() + 1 > context_length_;
  if (eos || static_cast<int>(s.generated.size()) >= p.max_tokens || full) {
    release(s, GenerationResult{eos ? "stop" : "length", ""}, true);
    s.request.reset();  // removed from slots_ by the caller
  } else {
    s.next_input = s.generated.back();
  }
}

void Scheduler::release(Slot& s, GenerationResult r, bool save_reply) {
  // The state holds the prompt and every generated token but the last (never fed).
  if (save_reply && cache_ && !s.generated.empty()) {
    std::vector<int32_t> tokens = s.prompt();
    tokens.insert(tokens.end(), s.generated.begin(), s.generated.end() - 1);
    if (static_cast<int64_t>(tokens.size()) == s.state.n_past()) cache_->insert(tokens, s.state);
  }
  r.prompt_tokens = static_cast<int64_t>(s.prompt().size());
  r.cached_tokens = s.cached;
  r.completion_tokens = static_cast<int64_t>(s.generated.size());
  r.first_token_seconds = s.first_token_seconds;
  {
    std::lock_guard lock(mutex_);
    stats_.running = std::max<int64_t>(0, stats_.running - 1);  // the slot is free for submit() now
    stats_.completion_tokens += s.generated.size();
    if (r.finish_reason == "cancelled") ++stats_.cancelled;
    else if (r.finish_reason == "error") ++stats_.errors;
    else ++stats_.finished;
  }
  s.request->finish(std::move(r));
}

}  // namespace fh1
