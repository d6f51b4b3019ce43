// Stop strings over streamed text: text is released only when no stop string can still begin in
// it, so a client never sees part of a stop string, and the reply ends right before the first
// stop string found.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace fh1::server {

class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops);

  // Adds generated text; returns the text now safe to show. After a match, returns the text
  // before the stop string once, then nothing.
  std::string push(std::string_view text);
  // The end of the reply: returns whatever was held back (unless a stop string matched).
  std::string flush();
  bool matched() const { return matched_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;  // text that might be the start of a stop string
  bool matched_ = false;
};

}  // namespace fh1::server
