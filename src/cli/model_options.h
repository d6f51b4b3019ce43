// Options every model-running subcommand takes (-m, -t), and the loaded objects they give.
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "kernels/kernels.h"
#include "model/model.h"
#include "util/thread_pool.h"

namespace fh1::cli {

struct ModelOptions {
  std::string dir;
  int threads = 0;
  std::string device = "cpu";
  std::string kv_cache = "auto";
  bool quiet = false;

  void add_to(CLI::App& cmd) {
    cmd.add_option("-m,--model", dir, "Hugging Face model directory (config.json + safetensors)")->required();
    cmd.add_option("-t,--threads", threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
    cmd.add_option("--device", device, "cpu, or cuda[:N] in a build with -DFALCON_H1_CUDA=ON")->capture_default_str();
    cmd.add_option("--kv-cache", kv_cache,
                   "KV cache type: auto (the backend's default: f32 on the CPU, bf16 on CUDA), f32, bf16, or "
                   "q8 (8-bit values with a scale per 32: about half of bf16's bytes, not exact to the reference)")
        ->check(CLI::IsMember({"auto", "f32", "bf16", "q8"}))
        ->capture_default_str();
  }
};

// A --kv-cache name (f32, bf16, q8) as the backend's KV cache type; throws fh1::Error for another.
DType kv_cache_dtype_from_name(const std::string& name);
// The backend a --device names, its KV caches of the type kv_cache names (auto, f32, bf16, q8);
// throws fh1::Error for an unknown or unavailable one, or a KV type the backend cannot keep.
std::unique_ptr<Kernels> make_kernels(const std::string& device, ThreadPool& pool, const std::string& kv_cache = "auto");

// Owns the thread pool and backend the model runs on. Prints load time to stderr unless quiet.
struct LoadedModel {
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<Kernels> kernels;
  std::unique_ptr<Model> model;

  static LoadedModel load(const ModelOptions& opt);
};

}  // namespace fh1::cli
