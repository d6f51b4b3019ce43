#include "server/http_server.h"

#include <atomic>
#include <chrono>
#include <cstdio>

#include <httplib.h>

#include "server/api_error.h"
#include "server/metrics.h"
#include "server/openai_response.h"
#include "server/web_page.h"
#include "util/error.h"

namespace fh1::server {

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr auto kPoll = 100ms;        // how often a waiting handler looks at its request
constexpr auto kKeepAlive = 2000ms;  // an SSE comment when nothing was sent for this long
constexpr auto kPlainReplyWait = 1000ms;  // a whole reply ready by then is sent with Content-Length

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status(), e.to_json()); }

std::string sse(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A streamed reply: owned by the content provider, which httplib calls until it is done.
struct StreamingReply {
  std::shared_ptr<CompletionRequest> request;
  std::shared_ptr<GenerationRequest> generation;
  ReplyBuilder builder;
  ServerMetrics& metrics;
  bool sent_role = false;
  std::chrono::steady_clock::time_point last_write = std::chrono::steady_clock::now();

  bool write(httplib::DataSink& sink, const std::string& data) {
    last_write = std::chrono::steady_clock::now();
    return sink.write(data.data(), data.size());
  }

  // One call of the provider: sends what is new; false when the client is gone.
  bool pump(httplib::DataSink& sink) {
    if (!sent_role) {
      sent_role = true;
      if (request->endpoint == Endpoint::chat &&
          !write(sink, sse(builder.chunk(ReplyBuilder::Delta{"", nullptr}, std::nullopt, true))))
        return false;
    }
    std::vector<GeneratedToken> tokens;
    std::optional<GenerationResult> result = generation->wait_for(kPoll, tokens);
    const ReplyBuilder::Delta delta = builder.add(tokens);
    if (!delta.empty() && !write(sink, sse(builder.chunk(delta, std::nullopt, false)))) return false;
    if (builder.stop_matched() && !result) {
      generation->cancel();  // the slot is freed at the next step; wait for the usage
      while (!(result = generation->wait_for(kPoll, tokens))) {
      }
    }
    if (!result) {
      if (std::chrono::steady_clock::now() - last_write > kKeepAlive && !write(sink, ": keep-alive\n\n")) return false;
      return true;
    }
    if (result->finish_reason == "error") {
      write(sink, sse(ApiError(500, result->error, "", "generation_failed").to_json()));
      write(sink, "data: [DONE]\n\n");
      sink.done();
      return true;
    }
    if (builder.stop_matched()) result->completion_tokens = builder.tokens_used();
    metrics.observe_reply(result->first_token_seconds, result->total_seconds);
    const ReplyBuilder::Delta rest = builder.finish();
    if (!write(sink, sse(builder.chunk(rest, builder.finish_reason(*result), false)))) return false;
    if (request->include_usage && !write(sink, sse(builder.usage_chunk(*result)))) return false;
    if (!write(sink, "data: [DONE]\n\n")) return false;
    sink.done();
    return true;
  }
};

// A reply sent whole (not streamed): gathers the tokens, then makes the response object.
struct WholeReply {
  std::shared_ptr<CompletionRequest> request;
  std::shared_ptr<GenerationRequest> generation;
  ReplyBuilder builder;
  ServerMetrics& metrics;
  std::optional<GenerationResult> result;

  // Waits a little for tokens; true once generation has ended.
  bool wait() {
    if (result) return true;
    std::vector<GeneratedToken> tokens;
    result = generation->wait_for(kPoll, tokens);
    builder.add(tokens);
    if (builder.stop_matched() && !result) generation->cancel();
    return result.has_value();
  }
  // The response object (or error object, with its status).
  json body(bool stopping, int& status) {
    if (result->finish_reason == "error") {
      const ApiError e(stopping ? 503 : 500, result->error, "", stopping ? "shutting_down" : "generation_failed");
      status = e.status();
      return e.to_json();
    }
    if (builder.stop_matched()) result->completion_tokens = builder.tokens_used();
    builder.finish();
    metrics.observe_reply(result->first_token_seconds, result->total_seconds);
    status = 200;
    return builder.response(*result);
  }
};

}  // namespace

struct HttpServer::Impl {
  Scheduler& scheduler;
  ServedModel model;
  ServerOptions options;
  httplib::Server http;
  ServerMetrics metrics;
  std::atomic<bool> stopping{false};
  int bound_port = -1;
  int64_t started = unix_now();

  Impl(Scheduler& s, ServedModel m, ServerOptions o) : scheduler(s), model(std::move(m)), options(std::move(o)) {}

  void routes();
  void completion(Endpoint endpoint, const httplib::Request& req, httplib::Response& res);
  void complete_now(const std::shared_ptr<CompletionRequest>& request,
                    const std::shared_ptr<GenerationRequest>& generation, httplib::Response& res);
  json model_card() const {
    return {{"id", model.name}, {"object", "model"}, {"created", started}, {"owned_by", "falcon-h1"},
            {"context_length", model.context_length}};
  }
};

HttpServer::HttpServer(Scheduler& scheduler, ServedModel model, ServerOptions options)
    : impl_(std::make_unique<Impl>(scheduler, std::move(model), std::move(options))) {
  Impl& m = *impl_;
  const auto stats = scheduler.stats();
  const int threads = m.options.http_threads > 0
                          ? m.options.http_threads
                          : static_cast<int>(stats.parallel + stats.queue_limit + 16);
  m.http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  m.http.set_payload_max_length(m.options.max_body_bytes);
  m.http.set_read_timeout(m.options.read_timeout_s, 0);
  m.http.set_write_timeout(m.options.write_timeout_s, 0);
  m.http.set_keep_alive_timeout(5);
  m.routes();
}

HttpServer::~HttpServer() = default;

void HttpServer::bind() {
  const int port = impl_->options.port == 0 ? impl_->http.bind_to_any_port(impl_->options.host)
                                            : (impl_->http.bind_to_port(impl_->options.host, impl_->options.port)
                                                   ? impl_->options.port
                                                   : -1);
  if (port < 0)
    throw Error("cannot listen on " + impl_->options.host + ":" + std::to_string(impl_->options.port) +
                " (address in use, or not an address of this machine)");
  impl_->bound_port = port;
}

int HttpServer::port() const { return impl_->bound_port; }

bool HttpServer::run() { return impl_->http.listen_after_bind(); }

void HttpServer::stop() {
  if (impl_->stopping.exchange(true)) return;
  impl_->scheduler.shutdown();  // ends every request, so the handlers waiting on them return
  impl_->http.stop();
}

void HttpServer::Impl::routes() {
  http.set_default_headers({{"Access-Control-Allow-Origin", "*"}});
  http.Options(R"(.*)", [](const httplib::Request&, httplib::Response& res) {
    res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    res.set_header("Access-Control-Allow-Headers", "Content-Type, Authorization");
    res.status = 204;
  });
  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(chat_page_html(), "text/html; charset=utf-8");
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (stopping) return send_json(res, 503, {{"status", "shutting down"}});
    send_json(res, 200, {{"status", "ok"}});
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.render(scheduler.stats()), "text/plain; version=0.0.4");
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, {{"object", "list"}, {"data", json::array({model_card()})}});
  });
  http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] != model.name)
      return send_error(res, ApiError(404, "The model '" + req.matches[1].str() + "' does not exist", "model",
                                      "model_not_found"));
    send_json(res, 200, model_card());
  });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    completion(Endpoint::chat, req, res);
  });
  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    completion(Endpoint::completion, req, res);
  });

  // Errors httplib finds itself (no such route, body too large, unreadable request) and
  // exceptions escaping a handler become OpenAI error objects too.
  http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req,
                                                                 httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string message = "the request could not be handled (HTTP " + std::to_string(res.status) + ")";
    if (res.status == 400) message = "the request could not be read (malformed HTTP, or the client was too slow)";
    if (res.status == 404) message = "no route " + req.method + " " + req.path;
    if (res.status == 413) message = "the request body is too large";
    send_json(res, res.status, ApiError(res.status, message).to_json());
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string message = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, message));
  });
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    std::string endpoint = req.path;
    if (endpoint.rfind("/v1/models/", 0) == 0) endpoint = "/v1/models/{id}";
    else if (endpoint != "/" && endpoint != "/health" && endpoint != "/metrics" && endpoint != "/v1/models" &&
             endpoint != "/v1/chat/completions" && endpoint != "/v1/completions")
      endpoint = "other";
    metrics.count_request(endpoint, res.status);
    if (options.log_requests)
      std::fprintf(stderr, "%s %s %s -> %d\n", req.remote_addr.c_str(), req.method.c_str(), req.path.c_str(),
                   res.status);
  });
}

void HttpServer::Impl::completion(Endpoint endpoint, const httplib::Request& req, httplib::Response& res) {
  try {
    if (stopping) throw ApiError(503, "the server is shutting down", "", "shutting_down");
    auto request = std::make_shared<CompletionRequest>(parse_completion_request(endpoint, req.body, model));
    auto generation = std::make_shared<GenerationRequest>(request->generation);
    switch (scheduler.submit(generation)) {
      case Scheduler::Admission::accepted:
        break;
      case Scheduler::Admission::queue_full:
        throw ApiError(429, "too many requests: every slot is busy and the queue is full, retry later", "",
                       "queue_full");
      case Scheduler::Admission::shutting_down:
        throw ApiError(503, "the server is shutting down", "", "shutting_down");
      case Scheduler::Admission::invalid:
        throw ApiError(400, "the prompt cannot be run (empty, outside the vocabulary or the context)");
    }
    if (!request->stream) return complete_now(request, generation, res);
    auto reply = std::make_shared<StreamingReply>(
        StreamingReply{request, generation, ReplyBuilder(*request, model.text->tokenizer(), model.name), metrics});
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream", [reply](size_t, httplib::DataSink& sink) { return reply->pump(sink); },
        [generation](bool) { generation->cancel(); });  // done or client gone: free the slot either way
  } catch (const ApiError& e) {
    send_error(res, e);
  }
}

void HttpServer::Impl::complete_now(const std::shared_ptr<CompletionRequest>& request,
                                    const std::shared_ptr<GenerationRequest>& generation, httplib::Response& res) {
  auto reply = std::make_shared<WholeReply>(
      WholeReply{request, generation, ReplyBuilder(*request, model.text->tokenizer(), model.name), metrics,
                 std::nullopt});
  // A short reply is answered plainly; a long one as a chunked body with a space every 2 s
  // until the JSON (valid leading whitespace): a client that hung up is then noticed and its
  // slot freed, as for streams.
  const auto deadline = std::chrono::steady_clock::now() + kPlainReplyWait;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!reply->wait()) continue;
    int status = 200;
    json body = reply->body(stopping, status);
    return send_json(res, status, body);
  }
  res.set_chunked_content_provider(
      "application/json",
      [this, reply, last_write = std::chrono::steady_clock::now()](size_t, httplib::DataSink& sink) mutable {
        if (reply->wait()) {
          int status = 200;  // already sent: an error is told in the body
          const std::string body = reply->body(stopping, status).dump(-1, ' ', false, json::error_handler_t::replace);
          if (!sink.write(body.data(), body.size())) return false;
          sink.done();
          return true;
        }
        if (std::chrono::steady_clock::now() - last_write > kKeepAlive) {
          last_write = std::chrono::steady_clock::now();
          if (!sink.write(" ", 1)) return false;
        }
        return true;
      },
      [generation](bool) { generation->cancel(); });
}

}  // namespace fh1::server
