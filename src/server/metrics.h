// Counters for GET /metrics, in the Prometheus text format: requests by endpoint and status,
// reply timings, and the scheduler's and state cache's own counters.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "runtime/scheduler.h"

namespace fh1::server {

class ServerMetrics {
 public:
  void count_request(const std::string& endpoint, int status);
  // A finished reply: seconds to the first token and in all.
  void observe_reply(double first_token_seconds, double total_seconds);
  std::string render(const Scheduler::Stats& scheduler) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  uint64_t replies_ = 0;
  double first_token_sum_ = 0, total_sum_ = 0;
};

}  // namespace fh1::server
