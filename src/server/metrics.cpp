#include "server/metrics.h"

#include <sstream>

namespace fh1::server {

void ServerMetrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lock(mutex_);
  ++requests_[{endpoint, status}];
}

void ServerMetrics::observe_reply(double first_token_seconds, double total_seconds) {
  std::lock_guard lock(mutex_);
  ++replies_;
  first_token_sum_ += first_token_seconds;
  total_sum_ += total_seconds;
}

std::string ServerMetrics::render(const Scheduler::Stats& s) const {
  std::ostringstream o;
  auto metric = [&](const char* name, const char* type, const char* help, auto value) {
    o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n' << name << ' ' << value << '\n';
  };
  {
    std::lock_guard lock(mutex_);
    o << "# HELP fh1_http_requests_total HTTP requests answered, by endpoint and status.\n"
         "# TYPE fh1_http_requests_total counter\n";
    for (const auto& [key, n] : requests_)
      o << "fh1_http_requests_total{endpoint=\"" << key.first << "\",status=\"" << key.second << "\"} " << n << '\n';
    o << "# HELP fh1_time_to_first_token_seconds Seconds from submission to the first generated token.\n"
         "# TYPE fh1_time_to_first_token_seconds summary\n"
      << "fh1_time_to_first_token_seconds_sum " << first_token_sum_ << "\nfh1_time_to_first_token_seconds_count "
      << replies_ << '\n';
    o << "# HELP fh1_request_duration_seconds Seconds from submission to the end of generation.\n"
         "# TYPE fh1_request_duration_seconds summary\n"
      << "fh1_request_duration_seconds_sum " << total_sum_ << "\nfh1_request_duration_seconds_count " << replies_
      << '\n';
  }
  metric("fh1_sequences_running", "gauge", "Sequences in the batch now.", s.running);
  metric("fh1_requests_queued", "gauge", "Requests waiting for a slot.", s.queued);
  metric("fh1_parallel_limit", "gauge", "Most sequences decoded together (--parallel).", s.parallel);
  metric("fh1_queue_limit", "gauge", "Most requests waiting (--queue).", s.queue_limit);
  metric("fh1_forward_steps_total", "counter", "Batched forward calls.", s.steps);
  metric("fh1_batch_rows_total", "counter", "Sequences over all forward calls (rows / steps = mean batch).",
         s.batch_rows);
  metric("fh1_forward_seconds_total", "counter", "Seconds spent in forward calls.", s.busy_seconds);
  metric("fh1_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", s.prompt_tokens);
  metric("fh1_cached_prompt_tokens_total", "counter", "Prompt tokens restored from the state cache.",
         s.cached_tokens);
  metric("fh1_completion_tokens_total", "counter", "Tokens generated.", s.completion_tokens);
  metric("fh1_requests_finished_total", "counter", "Requests that ended by eos or length.", s.finished);
  metric("fh1_requests_cancelled_total", "counter", "Requests cancelled (client gone, stop string).", s.cancelled);
  metric("fh1_requests_failed_total", "counter", "Requests that ended with an error.", s.errors);
  metric("fh1_state_cache_bytes", "gauge", "Bytes of saved states.", s.cache.bytes);
  metric("fh1_state_cache_max_bytes", "gauge", "State cache limit (--cache-mb).", s.cache.max_bytes);
  metric("fh1_state_cache_entries", "gauge", "Saved states.", s.cache.entries);
  metric("fh1_state_cache_hits_total", "counter", "Prompts resumed from a saved state.", s.cache.hits);
  metric("fh1_state_cache_misses_total", "counter", "Prompts with no usable saved state.", s.cache.misses);
  metric("fh1_state_cache_evictions_total", "counter", "Saved states dropped to stay under the limit.",
         s.cache.evictions);
  return o.str();
}

}  // namespace fh1::server
