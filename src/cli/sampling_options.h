// Sampling and length options shared by generate and chat.
#pragma once

#include <CLI/CLI.hpp>

#include "runtime/generator.h"

namespace fh1::cli {

struct SamplingOptions {
  int n = 64;
  float temperature = 0.0f, top_p = 1.0f, min_p = 0.0f;
  int top_k = 0;
  uint64_t seed = 0;
  bool ignore_eos = false;
  int64_t ctx = 0, prompt_chunk = 0;

  void add_to(CLI::App& cmd, int default_n) {
    n = default_n;
    cmd.add_option("-n,--n-predict", n, "tokens to generate (per reply)")->check(CLI::NonNegativeNumber)->capture_default_str();
    cmd.add_option("--temperature", temperature, "0 = greedy (default)")->check(CLI::NonNegativeNumber);
    cmd.add_option("--top-k", top_k, "keep the k most likely tokens (0 = off)")->check(CLI::NonNegativeNumber);
    cmd.add_option("--top-p", top_p, "nucleus sampling mass (1 = off)")->check(CLI::Range(0.0f, 1.0f));
    cmd.add_option("--min-p", min_p, "drop tokens below min-p x the top probability")->check(CLI::Range(0.0f, 1.0f));
    cmd.add_option("--seed", seed, "random seed for sampling");
    cmd.add_option("--ctx", ctx, "context length limit (default: max_position_embeddings)")->check(CLI::PositiveNumber);
    cmd.add_flag("--ignore-eos", ignore_eos, "do not stop at end-of-sequence tokens");
    cmd.add_option("--prompt-chunk", prompt_chunk,
                   "prompt tokens per forward call (default: 512 on the CPU, 8192 on CUDA; fewer: less memory)")
        ->check(CLI::PositiveNumber);
  }

  GenerateOptions to_generate_options() const {
    GenerateOptions g;
    g.max_new_tokens = n;
    g.sampling = {temperature, top_k, top_p, min_p, seed};
    g.ignore_eos = ignore_eos;
    g.context_length = ctx;
    g.prefill_chunk = prompt_chunk;
    return g;
  }
};

}  // namespace fh1::cli
