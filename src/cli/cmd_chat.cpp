// falcon-h1 chat: an interactive multi-turn chat in the terminal. The conversation's state is kept
// between turns (only new tokens are fed). Ctrl-C stops the reply, not the program; at the
// prompt, Ctrl-C or Ctrl-D quits.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cli/common.h"
#include "tokenizer/unicode.h"
#include "cli/model_options.h"
#include "cli/sampling_options.h"
#include "runtime/chat_session.h"
#include "util/error.h"

namespace fh1::cli {
namespace {

std::atomic<bool> g_interrupted{false};

void on_sigint(int) { g_interrupted.store(true); }

// Reads one line from stdin; returns false at end of input or on Ctrl-C.
bool read_line(std::string& line) {
  char* buf = nullptr;
  size_t cap = 0;
  errno = 0;
  const ssize_t n = ::getline(&buf, &cap, stdin);
  const bool ok = n >= 0;
  if (ok) {
    line.assign(buf, static_cast<size_t>(n));
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  }
  std::free(buf);
  return ok;
}

Runner add_chat_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    SamplingOptions sampling;
    std::string system;
    bool stats = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("chat", "Interactive chat (/reset, /exit; Ctrl-C stops a reply)");
  opt->model.add_to(*cmd);
  cmd->add_option("--system", opt->system, "system message");
  cmd->add_flag("--stats", opt->stats, "print tokens and speed after each reply");
  opt->sampling.add_to(*cmd, 512);
  return [cmd, opt]() -> int {
    if (!cmd->parsed()) return -1;
    LoadedModel lm = LoadedModel::load(opt->model);
    const TextModel text = TextModel::load(opt->model.dir, lm.model->config());
    if (!text.has_own_chat_template())
      std::fprintf(stderr, "note: the model has no chat template; using ChatML\n");
    ChatSession session(*lm.model, text, opt->sampling.to_generate_options(), opt->system);

    struct sigaction sa{};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: a Ctrl-C at the prompt interrupts the read
    sigaction(SIGINT, &sa, nullptr);

    const bool tty = ::isatty(STDIN_FILENO);
    std::fprintf(stderr, "chat with %s: /reset starts over, /exit quits, Ctrl-C stops a reply\n", opt->model.dir.c_str());
    std::string line;
    for (;;) {
      if (tty) std::fprintf(stdout, "\n> ");
      std::fflush(stdout);
      g_interrupted.store(false);
      if (!read_line(line)) break;  // Ctrl-D, end of input, or Ctrl-C at the prompt
      if (line.empty()) continue;
      if (line == "/exit" || line == "/quit") break;
      if (line == "/reset") {
        session.reset();
        std::fprintf(stderr, "(conversation reset)\n");
        continue;
      }
      if (line == "/help") {
        std::fprintf(stderr, "/reset  start a new conversation\n/exit   quit\nCtrl-C  stop the reply\n");
        continue;
      }
      try {
        const ChatReply r = session.reply(
            line,
            [](const std::string& piece) {
              std::fputs(piece.c_str(), stdout);
              std::fflush(stdout);
            },
            [] { return g_interrupted.load(); });
        std::fputs("\n", stdout);
        if (r.result.finish_reason == "cancelled") std::fprintf(stderr, "(stopped)\n");
        if (opt->stats) {
          const double dc = r.result.decode_seconds > 0 ? static_cast<double>(r.result.ids.size()) / r.result.decode_seconds : 0;
          std::fprintf(stderr, "[%lld new prompt tokens, %lld reused; %zu generated at %.1f tok/s; context %lld]\n",
                       static_cast<long long>(r.prompt_tokens), static_cast<long long>(r.reused_tokens),
                       r.result.ids.size(), dc, static_cast<long long>(session.context_tokens()));
        }
      } catch (const Error& e) {
        std::fprintf(stderr, "error: %s\n", unicode::to_valid_utf8(e.what()).c_str());
      }
    }
    std::fputs("\n", stdout);
    return 0;
  };
}

const RegisterCommand registered(add_chat_command);

}  // namespace
}  // namespace fh1::cli
