// falcon-h1 quantize: a Q8_0 / Q4_0 / Q4_K copy of a model directory (see quant/quantize_model.h).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>

#include "cli/registry.h"
#include "quant/quantize_model.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace fh1::cli {
namespace {

Runner add_quantize_command(CLI::App& app) {
  struct Options {
    std::string in, out, type;
    int threads = 0;
    bool quiet = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("quantize", "Write a block-quantized copy of a model directory");
  cmd->add_option("-m,--model", opt->in, "Hugging Face model directory (float weights)")->required();
  cmd->add_option("--type", opt->type, "q8_0 (8.5 bits per weight), q4_0 (4.5) or q4_k (4.5)")
      ->required()
      ->check(CLI::IsMember({"q8_0", "q4_0", "q4_k"}, CLI::ignore_case));
  cmd->add_option("-o,--output", opt->out, "output directory (created; config and tokenizer files are copied)")
      ->required();
  cmd->add_option("-t,--threads", opt->threads, "threads (default: all cores)");
  cmd->add_flag("-q,--quiet", opt->quiet, "print only the summary");
  return [cmd, opt]() -> int {
    if (!cmd->parsed()) return -1;
    const DType type = quantized_dtype_from_name(opt->type);
    ThreadPool pool(opt->threads);
    const auto start = std::chrono::steady_clock::now();
    const bool tty = isatty(fileno(stderr));
    const QuantizeReport r = quantize_model(opt->in, opt->out, type, pool,
                                            [&](uint64_t done, uint64_t total, const std::string& name) {
      if (opt->quiet || !tty) return;
      std::fprintf(stderr, "\r\033[K%5.1f%%  %s", 100.0 * static_cast<double>(done) / static_cast<double>(total),
                   name.c_str());
    });
    if (tty && !opt->quiet) std::fprintf(stderr, "\r\033[K");
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    std::map<std::string, int> counts;  // "BF16 -> Q4_K" -> tensors
    for (const auto& t : r.tensors) {
      counts[std::string(dtype_name(t.from)) + " -> " + dtype_name(t.to)]++;
      if (!t.note.empty() && !opt->quiet) std::printf("  %s: %s\n", t.name.c_str(), t.note.c_str());
    }
    for (const auto& [what, n] : counts) std::printf("  %4d tensors %s\n", n, what.c_str());
    std::printf("quantized %s to %s in %.1f s: %.1f MB -> %.1f MB (%.2fx smaller)\n", opt->in.c_str(),
                opt->out.c_str(), secs, static_cast<double>(r.bytes_in) / 1e6, static_cast<double>(r.bytes_out) / 1e6,
                static_cast<double>(r.bytes_in) / static_cast<double>(std::max<uint64_t>(r.bytes_out, 1)));
    return 0;
  };
}

const RegisterCommand registered(add_quantize_command);

}  // namespace
}  // namespace fh1::cli
