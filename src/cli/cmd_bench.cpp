// falcon-h1 bench: how fast this machine runs a model. Prefill tokens/s at given prompt lengths,
// decode tokens/s at given context depths, the machine's memory read bandwidth and the decode
// floor it implies (bytes one decode step must read / bandwidth), a GEMM rate to judge prefill
// by, and peak memory. --shape builds a release-shaped model with random weights in memory, so no
// download is needed; -m measures a real model directory.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/model_options.h"
#include "kernels/cpu/memory_bandwidth.h"
#include "kernels/cpu/simd_kernels.h"
#include "model/model.h"
#include "model/benchmark_model.h"
#include "util/error.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace fh1::cli {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

// Bytes of the last-level cache (0 if unknown).
size_t llc_bytes() {
  size_t best = 0;
  for (int i = 0; i < 8; ++i) {
    std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/size");
    std::string s;
    if (!(f >> s) || s.empty()) continue;
    size_t v = std::stoull(s);
    if (s.back() == 'K') v <<= 10;
    if (s.back() == 'M') v <<= 20;
    best = std::max(best, v);
  }
  return best;
}

// "VmHWM" of /proc/self/status: the resident set's high-water mark, in bytes.
size_t peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

// Weight bytes one decode step reads: every matrix and vector, except that of the embedding
// table only one row is read (all of it when it is also the lm_head).
size_t decode_weight_bytes(const Model& m) {
  const ModelConfig& c = m.config();
  size_t n = m.weight_bytes();
  if (!c.tie_word_embeddings) {
    const TensorView& e = m.tensors().get("model.embed_tokens.weight");
    n -= e.nbytes - e.nbytes / static_cast<size_t>(c.vocab_size);
  }
  return n;
}

// Multiply-adds x2 of one token through the model at a context position (matmuls + attention;
// the scan and elementwise ops are left out), for prefill GFLOP/s.
double flops_per_token(const Model& m, double position, bool with_lm_head) {
  const ModelConfig& c = m.config();
  double params = 0;
  for (const auto& [name, t] : m.tensors().all())
    if (t->shape.size() == 2 && name != "model.embed_tokens.weight" && name != "lm_head.weight") params += t->numel();
  if (with_lm_head) params += static_cast<double>(c.vocab_size) * c.hidden_size;
  const double attention = 4.0 * c.num_attention_heads * c.head_dim * (position + 1) * c.num_hidden_layers;
  return 2.0 * params + attention;
}

struct GemmRate {
  std::string what;
  double gflops = 0;
};

// Our matmul on a square problem: T tokens x [n, n] weights.
GemmRate measure_own_gemm(Kernels& k, DType dtype, int64_t n) {
  std::vector<float> x(static_cast<size_t>(n * n)), y(static_cast<size_t>(n * n));
  std::vector<uint8_t> w(static_cast<size_t>(n * n) * dtype_size(dtype));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& v : x) v = u(rng);
  for (size_t i = 0; i < static_cast<size_t>(n * n); ++i) {
    const float v = u(rng) * 0.03f;
    if (dtype == DType::BF16) {
      const uint16_t h = f32_to_bf16(v);
      std::memcpy(w.data() + 2 * i, &h, 2);
    } else {
      std::memcpy(w.data() + 4 * i, &v, 4);
    }
  }
  TensorView tv;
  tv.name = "gemm";
  tv.dtype = dtype;
  tv.shape = {n, n};
  tv.data = w.data();
  tv.nbytes = w.size();
  const WeightView W = k.bind_weight(tv);
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    k.matmul(x.data(), n, n, W, nullptr, y.data());
    best = std::min(best, seconds_since(t0));
  }
  return {std::string("falcon-h1 matmul, ") + dtype_name(dtype) + " weights, " + std::to_string(n) + "^3",
          2.0 * n * n * n / best / 1e9};
}

// OpenBLAS sgemm on the same problem, if libopenblas is installed (loaded at run time, so the
// engine does not depend on it).
GemmRate measure_openblas_sgemm(int threads, int64_t n) {
  // OpenBLAS picks its kernels by CPU model and falls back to old SSE ones for models it does not
  // know (as on some virtual machines): ask for the AVX-512 kernels where the CPU has AVX-512.
  std::string note;
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr && __builtin_cpu_supports("avx512f")) {
    setenv("OPENBLAS_CORETYPE", "SKYLAKEX", 0);
    note = ", OPENBLAS_CORETYPE=SKYLAKEX";
  }
  void* lib = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) lib = dlopen("libopenblas.so", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return {"OpenBLAS sgemm: libopenblas not found", 0};
  using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
  using SetThreads = void (*)(int);
  auto sgemm = reinterpret_cast<Sgemm>(dlsym(lib, "cblas_sgemm"));
  auto set_threads = reinterpret_cast<SetThreads>(dlsym(lib, "openblas_set_num_threads"));
  if (sgemm == nullptr) return {"OpenBLAS sgemm: cblas_sgemm not found", 0};
  if (set_threads) set_threads(threads);
  std::vector<float> a(static_cast<size_t>(n * n), 0.5f), b(a.size(), 0.25f), c(a.size());
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    // C[M, N] = A[M, K] B[N, K]^T, as our matmul: RowMajor = 101, NoTrans = 111, Trans = 112.
    sgemm(101, 111, 112, static_cast<int>(n), static_cast<int>(n), static_cast<int>(n), 1.0f, a.data(),
          static_cast<int>(n), b.data(), static_cast<int>(n), 0.0f, c.data(), static_cast<int>(n));
    best = std::min(best, seconds_since(t0));
  }
  return {"OpenBLAS sgemm, f32, " + std::to_string(n) + "^3 (" + std::to_string(threads) + " threads" + note + ")",
          2.0 * n * n * n / best / 1e9};
}

// Random token ids in the vocabulary.
std::vector<int32_t> random_ids(int64_t n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> u(0, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = u(rng);
  return ids;
}

struct Prefill {
  int64_t tokens = 0;
  double seconds = 0, tokens_per_s = 0, gflops = 0;
};

Prefill run_prefill(const Model& m, int64_t tokens, double min_seconds) {
  Prefill r;
  r.tokens = tokens;
  const auto ids = random_ids(tokens, m.config().vocab_size, 7);
  double best = 1e30, total = 0;
  for (int rep = 0; rep < 5 && (rep == 0 || total < min_seconds); ++rep) {
    SequenceState s = m.new_state(tokens);
    const auto t0 = Clock::now();
    m.forward(s, ids);
    const double dt = seconds_since(t0);
    best = std::min(best, dt);
    total += dt;
  }
  r.seconds = best;
  r.tokens_per_s = static_cast<double>(tokens) / best;
  double flops = flops_per_token(m, 0, true);  // lm_head once
  for (int64_t t = 0; t < tokens; ++t) flops += flops_per_token(m, static_cast<double>(t), false);
  flops -= flops_per_token(m, 0, false);
  r.gflops = flops / best / 1e9;
  return r;
}

struct Decode {
  int64_t depth = 0, steps = 0;
  double seconds_per_token = 0, tokens_per_s = 0, bytes_per_token = 0;
};

// The decode step after a context of `depth` tokens. The context's KV rows are filled with
// random values instead of being computed (the step costs the same), so deep contexts are quick.
Decode run_decode(const Model& m, ThreadPool& pool, int64_t depth, double min_seconds, int max_steps) {
  const ModelConfig& c = m.config();
  SequenceState s = m.new_state(depth + max_steps + 2);
  const int64_t kvd = c.kv_dim();
  const DType kv_type = m.kernels().kv_cache_dtype();  // F32, BF16 or I8 (CPU backends)
  const size_t row_floats = m.kernels().kv_cache_floats(1, kvd);
  for (int l = 0; l < c.num_hidden_layers; ++l)
    for (float* cache : {s.k_cache(l), s.v_cache(l)})
      pool.parallel_for(static_cast<size_t>(depth), [&](size_t r0, size_t r1) {
        uint32_t x = static_cast<uint32_t>(r0 * 2654435761u + static_cast<uint32_t>(l) + 1);
        std::vector<float> row(static_cast<size_t>(kvd));
        for (size_t r = r0; r < r1; ++r) {
          for (float& v : row) {  // xorshift32, uniform in [-1, 1)
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v = static_cast<float>(x >> 8) * (2.0f / 16777216.0f) - 1.0f;
          }
          float* dst = cache + r * row_floats;
          if (kv_type == DType::I8) kv_q8_quantize_row(row.data(), kvd, reinterpret_cast<uint8_t*>(dst));
          else if (kv_type == DType::BF16)
            for (int64_t i = 0; i < kvd; ++i) reinterpret_cast<uint16_t*>(cache)[r * kvd + i] = f32_to_bf16(row[i]);
          else std::copy(row.begin(), row.end(), dst);
        }
      });
  s.advance(depth);
  const auto ids = random_ids(max_steps + 1, c.vocab_size, 11);
  m.forward(s, std::span<const int32_t>(ids.data(), 1));  // warm-up
  Decode r;
  r.depth = depth;
  const auto t0 = Clock::now();
  std::vector<double> step_seconds;
  while (r.steps < 3 || (seconds_since(t0) < min_seconds && r.steps < max_steps)) {
    const auto ts = Clock::now();
    m.forward(s, std::span<const int32_t>(ids.data() + 1 + r.steps, 1));
    step_seconds.push_back(seconds_since(ts));
    ++r.steps;
  }
  // The median step: robust to the odd step slowed by something else running on the machine.
  std::sort(step_seconds.begin(), step_seconds.end());
  r.seconds_per_token = step_seconds[step_seconds.size() / 2];
  r.tokens_per_s = 1.0 / r.seconds_per_token;
  const double mid_depth = static_cast<double>(depth) + 1.0 + static_cast<double>(r.steps) / 2.0;
  const double kv_bytes = 2.0 * c.num_hidden_layers * 4.0 *
                         static_cast<double>(m.kernels().kv_cache_floats(static_cast<int64_t>(mid_depth), kvd));
  r.bytes_per_token = static_cast<double>(decode_weight_bytes(m)) + static_cast<double>(c.state_bytes(0)) + kv_bytes;
  return r;
}

Runner add_bench_command(CLI::App& app) {
  struct Options {
    std::string dir, shape, prompts = "512", depths = "0,1024,4096", dtype = "bf16", kv_cache = "f32";
    int threads = 0;
    double min_seconds = 2.0;
    int max_steps = 64;
    int64_t gemm_n = 2048;
    bool json = false, no_bandwidth = false, no_gemm = false, reference = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("bench", "Measure prefill and decode speed, memory bandwidth and the decode floor");
  auto* m = cmd->add_option("-m,--model", opt->dir, "Hugging Face model directory to measure");
  auto* sh = cmd->add_option("--shape", opt->shape, "a release shape with random weights: 0.5B, 1.5B, 1.5B-deep, 3B, 7B, 34B");
  m->excludes(sh);
  cmd->add_option("-p,--prompt-lengths", opt->prompts, "prefill lengths, e.g. 512,4096 (empty: none)")->capture_default_str();
  cmd->add_option("-d,--depths", opt->depths, "context depths of the decode step, e.g. 0,1024,4096 (empty: none)")
      ->capture_default_str();
  cmd->add_option("-t,--threads", opt->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--dtype", opt->dtype, "weights of --shape: bf16, f32, q8_0, q4_0 or q4_k")
      ->check(CLI::IsMember({"bf16", "f32", "q8_0", "q4_0", "q4_k"}, CLI::ignore_case))
      ->capture_default_str();
  cmd->add_option("--min-seconds", opt->min_seconds, "time each figure at least this long (repeats short runs)")
      ->capture_default_str();
  cmd->add_option("--max-steps", opt->max_steps, "most decode steps per depth")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--gemm-size", opt->gemm_n, "n of the n^3 GEMM rate measurement")->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_flag("--no-bandwidth", opt->no_bandwidth, "skip the memory bandwidth measurement");
  cmd->add_flag("--no-gemm", opt->no_gemm, "skip the GEMM rate measurement");
  cmd->add_flag("--reference", opt->reference, "use the reference (unoptimized) CPU kernels");
  cmd->add_option("--kv-cache", opt->kv_cache, "KV cache type: f32, bf16 or q8")
      ->check(CLI::IsMember({"f32", "bf16", "q8"}))
      ->capture_default_str();
  cmd->add_flag("--json", opt->json, "print one JSON object");
  return [cmd, opt]() -> int {
    if (!cmd->parsed()) return -1;
    if (opt->dir.empty() == opt->shape.empty()) throw Error("bench: give a model (-m DIR) or a shape (--shape 0.5B)");
    // Check the model request before spending time on measurements.
    std::optional<BenchmarkShape> shape;
    const DType shape_dtype = is_quantized_dtype(quantized_dtype_from_name(opt->dtype))
                                  ? quantized_dtype_from_name(opt->dtype)
                                  : (opt->dtype == "f32" || opt->dtype == "F32" ? DType::F32 : DType::BF16);
    if (!opt->shape.empty()) {
      shape = benchmark_shape(opt->shape);
      const size_t need = random_weight_bytes(shape->config, shape_dtype);
      std::ifstream mi("/proc/meminfo");
      size_t avail = 0;
      for (std::string line; std::getline(mi, line);)
        if (line.rfind("MemAvailable:", 0) == 0) avail = std::stoull(line.substr(13)) * 1024;
      if (avail != 0 && need > avail * 9 / 10)
        throw Error("shape " + opt->shape + " needs " + std::to_string(need >> 20) + " MiB of " + opt->dtype +
                    " weights; only " + std::to_string(avail >> 20) + " MiB of memory is available");
    } else if (!std::filesystem::is_directory(opt->dir)) {
      throw Error(opt->dir + ": not a directory");
    }
    const auto prompts = parse_id_list(opt->prompts);
    const auto depths = parse_id_list(opt->depths);
    ThreadPool pool(opt->threads);
    auto kernels = opt->reference ? make_reference_kernels(pool) : make_cpu_kernels(pool);
    if (!kernels->set_kv_cache_dtype(kv_cache_dtype_from_name(opt->kv_cache)))
      throw Error("--kv-cache " + opt->kv_cache + ": the " + kernels->name() + " backend cannot keep that type");
    FILE* log = opt->json ? stderr : stdout;

    nlohmann::ordered_json j;
    j["machine"] = {{"cpu", cpu_model_name()}, {"threads", pool.size()},
                    {"hardware_threads", std::thread::hardware_concurrency()}, {"llc_bytes", llc_bytes()},
                    {"simd_target", simd::target_name()}, {"int8_dot", simd::quant_dot_name()},
                    {"kernels", kernels->name()}, {"kv_cache", opt->kv_cache}};
    std::fprintf(log, "machine: %s, %d threads, LLC %.0f MB, kernels %s, int8 dot %s\n", cpu_model_name().c_str(),
                 pool.size(), static_cast<double>(llc_bytes()) / 1e6, kernels->name().c_str(), simd::quant_dot_name());

    double bandwidth = 0;
    if (!opt->no_bandwidth) {
      const size_t bytes = std::max<size_t>(size_t{1} << 30, 4 * llc_bytes());
      const BandwidthResult bw = measure_read_bandwidth(pool, bytes, 5);
      bandwidth = bw.bytes_per_second;
      j["bandwidth"] = {{"read_bytes_per_s", bw.bytes_per_second}, {"buffer_bytes", bw.buffer_bytes},
                        {"repetitions", bw.repetitions}};
      std::fprintf(log, "memory read bandwidth: %.2f GB/s (%d threads, %.0f MB buffer, best of %d)\n",
                   bandwidth / 1e9, pool.size(), static_cast<double>(bw.buffer_bytes) / 1e6, bw.repetitions);
    }

    double gemm_rate = 0;
    if (!opt->no_gemm) {
      nlohmann::ordered_json g = nlohmann::ordered_json::array();
      for (const GemmRate& r : {measure_own_gemm(*kernels, DType::BF16, opt->gemm_n),
                                measure_own_gemm(*kernels, DType::F32, opt->gemm_n),
                                measure_openblas_sgemm(pool.size(), opt->gemm_n)}) {
        g.push_back({{"what", r.what}, {"gflops", r.gflops}});
        std::fprintf(log, "GEMM: %-55s %8.1f GFLOP/s\n", r.what.c_str(), r.gflops);
        gemm_rate = std::max(gemm_rate, r.gflops);
      }
      j["gemm"] = g;
      j["gemm_rate_gflops"] = gemm_rate;
    }

    // The peak memory reported is the model's: forget the measurement buffers' high-water mark.
    { std::ofstream("/proc/self/clear_refs") << "5"; }
    // The model.
    std::vector<std::string> guessed;
    std::unique_ptr<Model> model;
    const auto t_load = Clock::now();
    if (shape) {
      guessed = shape->guessed;
      model = std::make_unique<Model>(
          Model::from_store(shape->config, random_weights(shape->config, shape_dtype, pool), *kernels));
    } else {
      model = std::make_unique<Model>(Model::load(opt->dir, *kernels));
    }
    const ModelConfig& c = model->config();
    j["model"] = {{"source", opt->shape.empty() ? opt->dir : "shape " + opt->shape + " (random " + opt->dtype + " weights)"},
                  {"parameters", model->parameter_count()}, {"weight_bytes", model->weight_bytes()},
                  {"decode_weight_bytes", decode_weight_bytes(*model)}, {"guessed", guessed},
                  {"load_seconds", seconds_since(t_load)}};
    std::fprintf(log, "model: %s: %.1fM parameters, %.1f MB of weights (%.1f MB read per decode step)\n",
                 j["model"]["source"].get<std::string>().c_str(), static_cast<double>(model->parameter_count()) / 1e6,
                 static_cast<double>(model->weight_bytes()) / 1e6, static_cast<double>(decode_weight_bytes(*model)) / 1e6);
    if (!guessed.empty()) {
      std::string g;
      for (const auto& s : guessed) g += (g.empty() ? "" : ", ") + s;
      std::fprintf(log, "  guessed (not in the release table): %s\n", g.c_str());
    }

    // Warm up: page the weights in, grow the thread pool's caches.
    {
      SequenceState s = model->new_state(16);
      model->forward(s, random_ids(16, c.vocab_size, 5));
    }
    nlohmann::ordered_json pj = nlohmann::ordered_json::array();
    for (int32_t p : prompts) {
      if (p <= 0) continue;
      const Prefill r = run_prefill(*model, p, opt->min_seconds);
      nlohmann::ordered_json e = {{"tokens", r.tokens}, {"seconds", r.seconds}, {"tokens_per_s", r.tokens_per_s},
                                  {"gflops", r.gflops}};
      if (gemm_rate > 0) e["pct_of_gemm_rate"] = 100.0 * r.gflops / gemm_rate;
      pj.push_back(e);
      std::fprintf(log, "prefill %6d tokens: %9.1f tokens/s  (%.2f s, %.1f GFLOP/s", p, r.tokens_per_s, r.seconds, r.gflops);
      if (gemm_rate > 0) std::fprintf(log, ", %.0f%% of the GEMM rate", 100.0 * r.gflops / gemm_rate);
      std::fprintf(log, ")\n");
    }
    j["prefill"] = pj;
    nlohmann::ordered_json dj = nlohmann::ordered_json::array();
    for (int32_t d : depths) {
      const Decode r = run_decode(*model, pool, d, opt->min_seconds, opt->max_steps);
      nlohmann::ordered_json e = {{"depth", r.depth}, {"steps", r.steps}, {"ms_per_token_median", 1e3 * r.seconds_per_token},
                                  {"tokens_per_s", r.tokens_per_s}, {"bytes_per_token", r.bytes_per_token}};
      std::fprintf(log, "decode at depth %6d: %9.2f tokens/s  (%.1f ms/token, %d steps", d, r.tokens_per_s,
                   1e3 * r.seconds_per_token, static_cast<int>(r.steps));
      if (bandwidth > 0) {
        const double floor_tps = bandwidth / r.bytes_per_token;
        e["floor_tokens_per_s"] = floor_tps;
        e["pct_of_floor"] = 100.0 * r.tokens_per_s / floor_tps;
        std::fprintf(log, "; floor %.2f tokens/s = %.1f MB / %.2f GB/s: %.0f%% of it", floor_tps,
                     r.bytes_per_token / 1e6, bandwidth / 1e9, 100.0 * r.tokens_per_s / floor_tps);
      }
      std::fprintf(log, ")\n");
      dj.push_back(e);
    }
    j["decode"] = dj;
    j["peak_rss_bytes"] = peak_rss_bytes();
    std::fprintf(log, "peak memory (VmHWM): %.1f MB\n", static_cast<double>(peak_rss_bytes()) / 1e6);
    if (opt->json) std::printf("%s\n", j.dump(2).c_str());
    return 0;
  };
}

const RegisterCommand registered(add_bench_command);

}  // namespace
}  // namespace fh1::cli
