// falcon-h1 serve: an OpenAI-compatible HTTP server (chat and text completions, streaming, a
// web chat page at /) over one model, batching concurrent requests. See docs/server.md.
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <pthread.h>

#include "cli/common.h"
#include "cli/model_options.h"
#include "runtime/scheduler.h"
#include "runtime/text_model.h"
#include "server/http_server.h"
#include "util/error.h"

namespace fh1::cli {
namespace {

Runner add_serve_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string host = "127.0.0.1", name;
    int port = 8080, parallel = 4, queue = 64, read_timeout = 30, write_timeout = 30, http_threads = 0;
    int64_t ctx = 0, step_tokens = 0;
    double cache_mb = 256, max_body_mb = 8;
    bool quiet = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API (and a chat page)");
  opt->model.add_to(*cmd);
  cmd->add_option("--host", opt->host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", opt->port, "port to listen on (0: any free port, printed at start)")
      ->check(CLI::Range(0, 65535))->capture_default_str();
  cmd->add_option("--name", opt->name, "model name clients use (default: the model directory's name)");
  cmd->add_option("--parallel", opt->parallel, "sequences generated together")
      ->check(CLI::Range(1, 1024))->capture_default_str();
  cmd->add_option("--queue", opt->queue, "requests waiting for a slot before new ones get 429")
      ->check(CLI::Range(0, 100000))->capture_default_str();
  cmd->add_option("--ctx", opt->ctx, "context length per sequence (default: max_position_embeddings)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--step-tokens", opt->step_tokens,
                  "prompt tokens fed per batched step (prefill chunk; default: 256 on the CPU, 2048 on CUDA)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--cache-mb", opt->cache_mb, "memory for saved conversation states (0: no cache)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  cmd->add_option("--max-body-mb", opt->max_body_mb, "largest request body (larger: 413)")
      ->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--read-timeout", opt->read_timeout, "seconds a client may stay silent while sending")
      ->check(CLI::Range(1, 3600))->capture_default_str();
  cmd->add_option("--write-timeout", opt->write_timeout, "seconds a client may stay unready to receive")
      ->check(CLI::Range(1, 3600))->capture_default_str();
  cmd->add_option("--http-threads", opt->http_threads, "HTTP worker threads (default: parallel + queue + 16)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("-q,--quiet", opt->quiet, "do not log each request");
  return [cmd, opt]() -> int {
    if (!cmd->parsed()) return -1;
    // SIGINT/SIGTERM are taken by one thread (below), so every other thread must block them.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    LoadedModel lm = LoadedModel::load(opt->model);
    const TextModel text = TextModel::load(opt->model.dir, lm.model->config());
    SchedulerOptions so;
    so.parallel = opt->parallel;
    so.queue = opt->queue;
    so.step_tokens = opt->step_tokens;
    so.context_length = opt->ctx;
    so.cache_bytes = static_cast<uint64_t>(opt->cache_mb * 1024 * 1024);
    Scheduler scheduler(*lm.model, so);

    server::ServedModel served;
    served.name = opt->name;
    if (served.name.empty()) served.name = std::filesystem::path(opt->model.dir).lexically_normal().filename().string();
    if (served.name.empty()) served.name = std::filesystem::path(opt->model.dir).lexically_normal().parent_path().filename().string();
    served.text = &text;
    served.context_length = scheduler.context_length();
    served.vocab_size = lm.model->config().vocab_size;
    server::ServerOptions sopt;
    sopt.host = opt->host;
    sopt.port = opt->port;
    sopt.max_body_bytes = static_cast<size_t>(opt->max_body_mb * 1024 * 1024);
    sopt.read_timeout_s = opt->read_timeout;
    sopt.write_timeout_s = opt->write_timeout;
    sopt.http_threads = opt->http_threads;
    sopt.log_requests = !opt->quiet;
    server::HttpServer http(scheduler, served, sopt);
    http.bind();

    std::thread signal_waiter([&http, signals] {
      int sig = 0;
      sigwait(&signals, &sig);
      std::fprintf(stderr, "signal %d: shutting down\n", sig);
      http.stop();
    });
    std::fprintf(stderr,
                 "serving '%s' on http://%s:%d (parallel %d, queue %d, context %lld, %lld prompt tokens a step, "
                 "cache %.0f MB)\n",
                 served.name.c_str(), opt->host.c_str(), http.port(), opt->parallel, opt->queue,
                 static_cast<long long>(served.context_length), static_cast<long long>(scheduler.step_tokens()),
                 opt->cache_mb);
    std::printf("listening on http://%s:%d\n", opt->host.c_str(), http.port());
    std::fflush(stdout);
    const bool ok = http.run();
    // Wake the signal thread if it is still waiting (listening ended some other way).
    pthread_kill(signal_waiter.native_handle(), SIGTERM);
    signal_waiter.join();
    http.stop();
    std::fprintf(stderr, "stopped\n");
    return ok ? 0 : 1;
  };
}

const RegisterCommand registered(add_serve_command);

}  // namespace
}  // namespace fh1::cli
