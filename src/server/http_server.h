// The OpenAI-compatible HTTP server: routes, request limits, errors as OpenAI error objects, SSE
// streaming, the web page, health and metrics. Generation itself is the Scheduler's.
#pragma once

#include <memory>
#include <string>

#include "runtime/scheduler.h"
#include "server/openai_request.h"

namespace fh1::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                    // 0: any free port (see HttpServer::port())
  size_t max_body_bytes = 8u << 20;   // larger bodies: 413
  int read_timeout_s = 30;            // a client that sends nothing for this long is dropped
  int write_timeout_s = 30;           // ... or reads nothing
  int http_threads = 0;               // 0: parallel + queue + 16 (each open request holds a thread)
  bool log_requests = true;           // one line per request on stderr
};

class HttpServer {
 public:
  HttpServer(Scheduler& scheduler, ServedModel model, ServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the socket; throws fh1::Error when the address cannot be used.
  void bind();
  int port() const;
  // Serves until stop(); returns false if listening failed.
  bool run();
  // Answers 503 from now on, ends every running request, stops listening. Thread-safe.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fh1::server
