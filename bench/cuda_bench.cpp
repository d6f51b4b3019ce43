// cuda-bench: Falcon-H1 on the CUDA backend with random bf16 weights at release shapes.
// Prefill tokens/s, decode tokens/s at batch 1, 8 and 64 at several contexts, GPU memory, and the two ceilings the numbers are read against: the device-to-device
// copy bandwidth (bytes read + written) and the cuBLAS bf16 GEMM rate on a large square product.
//
// The weights: a safetensors file is written with real values for the small tensors (norms,
// A_log, D, dt_bias, conv) and holes (zeros, no disk) for the matrices; after the model binds it,
// CudaKernels::randomize_weights fills every uploaded matrix with random values on the device.
//
//   cuda-bench [--models 0.5b,1.5b-deep,7b,34b] [--prefill 1024,4096,16384,32768] [--prefill-chunk 32768]
//              [--decode-ctx 1024,16384] [--batches 1,8,64] [--decode-steps 32] [--json out.jsonl]
//              [--dir /tmp] [--matmul bf16x2|bf16] [--f16-rows 1024] [--attention tf32|f32] [--ssd tf32|f32] [--graphs 1|0] [--kv bf16|f32]
//              [--logits all|top1|draw] [--scan 8192] [--matmul-rows 8192] [--attn-tokens 8192,32768]
// Prefill of T tokens: forward calls of at most --prefill-chunk tokens (bounded activations; the
// KV cache holds all T), the best of 3 runs up to 4K tokens, 2 up to 32K, else 1; the row ends
// with the rms of the last token's logits, and any non-finite ones are counted there and make the
// exit status 3 (a race once made every prompt NaN, and NaN GEMMs run faster); % of the GEMM
// rate counts every layer's matrices on all T rows, lm_head on the one row computed and the
// causal attention. Decode at context C: B sequences whose KV caches hold C rows of random
// values (set up without a prefill), one token per sequence per step: by default only each row's
// best logit, selected on the GPU and copied back (top1: a greedy step, as `generate` runs it),
// or each row's softmax sum and draw at temperature 1 computed on the GPU (draw: a sampling
// step), or every logit copied to the host (--logits all: what only a top-k beyond 256 does);
// combinations whose KV caches do not fit are skipped. --scan T: the Mamba-2 scan of one layer
// alone over T tokens (random inputs at the model's shape), the best of 5 calls (0: not run).
// --matmul-rows T: the prefill matmul alone, T rows through each of the model's weight shapes
// (conversions included), TFLOP/s of the best of 5 calls (0: not run). --attn-tokens T,...: one
// layer's prefill attention alone, T queries over an empty cache at the model's heads (the
// caches' fp16 copy included, as a prompt pays it), TFLOP/s of its causal products, the best of 5.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/cuda/cuda_kernels.h"
#include "model/model.h"
#include "util/error.h"
#include "util/half.h"

using namespace fh1;
namespace fs = std::filesystem;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Shape {
  std::string name;
  int layers, hidden, heads, kv_heads, head_dim, m_heads, m_head_dim, d_state, inter, vocab, groups;
  bool tied;
  const char* guessed;  // fields not in the design note's table
};

std::vector<Shape> all_shapes() {
  return {
      {"0.5b", 36, 1024, 8, 2, 64, 24, 64, 128, 2048, 32784, 1, true, ""},
      {"1.5b-deep", 66, 1280, 6, 2, 128, 24, 64, 256, 3072, 65537, 1, false, "intermediate_size, vocab_size, tied"},
      {"7b", 44, 3072, 12, 2, 128, 24, 128, 256, 12288, 130049, 1, false, "intermediate_size, vocab_size, tied"},
      {"34b", 72, 5120, 20, 4, 128, 32, 128, 256, 24576, 261120, 2, false,
       "intermediate_size, vocab_size, tied, mamba_n_groups"},
  };
}

ModelConfig make_config(const Shape& s) {
  ModelConfig c;
  c.vocab_size = s.vocab;
  c.hidden_size = s.hidden;
  c.intermediate_size = s.inter;
  c.num_hidden_layers = s.layers;
  c.num_attention_heads = s.heads;
  c.num_key_value_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.max_position_embeddings = 1 << 20;
  c.rope_theta = 1e11;
  c.mamba_n_heads = s.m_heads;
  c.mamba_d_head = s.m_head_dim;
  c.mamba_d_ssm = s.m_heads * s.m_head_dim;
  c.mamba_n_groups = s.groups;
  c.mamba_d_state = s.d_state;
  c.mamba_d_conv = 4;
  c.mamba_chunk_size = 128;
  c.mamba_conv_bias = true;
  c.mamba_rms_norm = false;
  c.tie_word_embeddings = s.tied;
  c.embedding_multiplier = 5.657;
  c.lm_head_multiplier = 0.0391;
  c.key_multiplier = 0.3906;
  c.attention_out_multiplier = 0.9375;
  c.mlp_multipliers = {0.884, 0.586};
  return c;
}

struct Entry {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;  // empty: a hole (zeros), randomized on the device later
};

// Writes the checkpoint; returns its path.
fs::path write_checkpoint(const ModelConfig& c, const fs::path& dir) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int64_t d = c.hidden_size, ds = c.mamba_d_ssm, Hm = c.mamba_n_heads, conv = c.conv_dim();
  std::vector<Entry> es;
  auto vec = [&](const std::string& n, std::vector<int64_t> shape, auto gen) {
    int64_t numel = 1;
    for (int64_t x : shape) numel *= x;
    Entry e{n, shape, std::vector<float>(static_cast<size_t>(numel))};
    for (auto& v : e.values) v = gen();
    es.push_back(std::move(e));
  };
  auto mat = [&](const std::string& n, int64_t r, int64_t k) { es.push_back({n, {r, k}, {}}); };
  auto one = [] { return 1.0f; };
  mat("model.embed_tokens.weight", c.vocab_size, d);
  if (!c.tie_word_embeddings) mat("lm_head.weight", c.vocab_size, d);
  vec("model.final_layernorm.weight", {d}, one);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    vec(p + "input_layernorm.weight", {d}, one);
    vec(p + "pre_ff_layernorm.weight", {d}, one);
    mat(p + "self_attn.q_proj.weight", c.q_dim(), d);
    mat(p + "self_attn.k_proj.weight", c.kv_dim(), d);
    mat(p + "self_attn.v_proj.weight", c.kv_dim(), d);
    mat(p + "self_attn.o_proj.weight", d, c.q_dim());
    mat(p + "feed_forward.gate_proj.weight", c.intermediate_size, d);
    mat(p + "feed_forward.up_proj.weight", c.intermediate_size, d);
    mat(p + "feed_forward.down_proj.weight", d, c.intermediate_size);
    mat(p + "mamba.in_proj.weight", c.in_proj_dim(), d);
    vec(p + "mamba.conv1d.weight", {conv, 1, c.mamba_d_conv}, [&] { return 0.5f * u(rng); });
    vec(p + "mamba.conv1d.bias", {conv}, [&] { return 0.1f * u(rng); });
    vec(p + "mamba.dt_bias", {Hm}, [&] { return -4.0f + u(rng); });
    vec(p + "mamba.A_log", {Hm}, [&] { return 1.5f + 1.3f * u(rng); });
    vec(p + "mamba.D", {Hm}, one);
    mat(p + "mamba.out_proj.weight", d, ds);
  }
  nlohmann::json header = nlohmann::json::object();
  uint64_t off = 0;
  for (const Entry& e : es) {
    int64_t numel = 1;
    for (int64_t x : e.shape) numel *= x;
    const uint64_t bytes = static_cast<uint64_t>(numel) * 2;
    header[e.name] = {{"dtype", "BF16"}, {"shape", e.shape}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8) h.push_back(' ');
  const fs::path path = dir / "model.safetensors";
  const int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) throw Error("cannot create " + path.string());
  const uint64_t hl = h.size();
  const uint64_t base = 8 + hl;
  if (::ftruncate(fd, static_cast<off_t>(base + off)) != 0) throw Error("ftruncate failed");
  auto pw = [&](const void* p, size_t n, uint64_t at) {
    if (::pwrite(fd, p, n, static_cast<off_t>(at)) != static_cast<ssize_t>(n)) throw Error("write failed");
  };
  pw(&hl, 8, 0);
  pw(h.data(), h.size(), 8);
  off = 0;
  for (const Entry& e : es) {
    int64_t numel = 1;
    for (int64_t x : e.shape) numel *= x;
    if (!e.values.empty()) {
      std::vector<uint16_t> b(e.values.size());
      for (size_t i = 0; i < b.size(); ++i) b[i] = f32_to_bf16(e.values[i]);
      pw(b.data(), b.size() * 2, base + off);
    }
    off += static_cast<uint64_t>(numel) * 2;
  }
  ::close(fd);
  return path;
}

void ck(cudaError_t e, const char* w) {
  if (e != cudaSuccess) throw Error(std::string(w) + ": " + cudaGetErrorString(e));
}

// Device-to-device copy bandwidth, bytes read + written, GB/s (median of 10).
double measure_copy_bw() {
  const size_t bytes = size_t(2) << 30;
  void *a, *b;
  ck(cudaMalloc(&a, bytes), "malloc");
  ck(cudaMalloc(&b, bytes), "malloc");
  ck(cudaMemset(a, 1, bytes), "memset");
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<float> ms;
  for (int i = 0; i < 13; ++i) {
    cudaEventRecord(e0);
    ck(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice), "copy");
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float t;
    cudaEventElapsedTime(&t, e0, e1);
    if (i >= 3) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / (ms[ms.size() / 2] * 1e-3) / 1e9;
}

// cuBLAS bf16 x bf16 -> f32 (as the backend calls it) on an 8192^3 product of random data, TFLOP/s.
double measure_gemm_rate() {
  const int n = 8192;
  void *A, *B, *C;
  ck(cudaMalloc(&A, size_t(n) * n * 2), "malloc");
  ck(cudaMalloc(&B, size_t(n) * n * 2), "malloc");
  ck(cudaMalloc(&C, size_t(n) * n * 4), "malloc");
  std::vector<uint16_t> h(size_t(n) * n);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& x : h) x = f32_to_bf16(u(rng));
  ck(cudaMemcpy(A, h.data(), h.size() * 2, cudaMemcpyHostToDevice), "up");
  ck(cudaMemcpy(B, h.data(), h.size() * 2, cudaMemcpyHostToDevice), "up");
  cublasHandle_t hd;
  cublasCreate(&hd);
  const float one = 1, zero = 0;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<float> ms;
  for (int i = 0; i < 13; ++i) {
    cudaEventRecord(e0);
    cublasGemmEx(hd, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, A, CUDA_R_16BF, n, B, CUDA_R_16BF, n, &zero, C,
                 CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float t;
    cudaEventElapsedTime(&t, e0, e1);
    if (i >= 3) ms.push_back(t);
  }
  ck(cudaGetLastError(), "gemm");
  std::sort(ms.begin(), ms.end());
  cublasDestroy(hd);
  cudaFree(A);
  cudaFree(B);
  cudaFree(C);
  return 2.0 * n * double(n) * n / (ms[ms.size() / 2] * 1e-3) / 1e12;
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ','))
    if (!x.empty()) v.push_back(std::stoll(x));
  return v;
}

size_t device_used() {
  size_t fr = 0, tot = 0;
  cudaMemGetInfo(&fr, &tot);
  return tot - fr;
}


// Bytes of KV cache per token of one sequence (K and V of every layer, in the backend's KV type).
uint64_t kv_bytes_per_token(const ModelConfig& c, const Kernels& k) {
  return uint64_t(k.kv_cache_floats(1, c.kv_dim())) * sizeof(float) * 2 * c.num_hidden_layers;
}

}  // namespace

int main(int argc, char** argv) {
  std::string models = "0.5b,1.5b-deep,7b", json_path, dir = "/tmp";
  std::vector<int64_t> prefill = {1024, 4096, 16384, 32768}, decode_ctx = {1024, 16384}, batches = {1, 8, 64};
  std::vector<int64_t> attn_tokens;
  int steps = 32;
  int64_t chunk = 32768, scan_tokens = 0, f16_rows = -1, matmul_rows = 0;
  int ssd_tf32 = -1;  // -1: the backend's default (FH1_CUDA_SSD_TF32)
  bool split = true, tf32 = true, graphs = true, top1 = true, draw = false;
  std::string kv_name = "bf16";  // --kv: bf16, f32 or q8
  size_t prompts_not_finite = 0;  // prefills whose last row had a non-finite logit: exit status 3
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--models") models = v;
    else if (a == "--matmul") split = v != "bf16";
    else if (a == "--f16-rows") f16_rows = std::stoll(v);  // fp16 GEMM from this many rows (0: never)
    else if (a == "--attention") tf32 = v != "f32";
    else if (a == "--ssd") ssd_tf32 = v != "f32" ? 1 : 0;  // the chunked SSD's products
    else if (a == "--graphs") graphs = v != "0";
    else if (a == "--kv") kv_name = v;
    else if (a == "--logits") {  // decode: every logit to the host, the best (greedy), or a draw
      if (v != "all" && v != "top1" && v != "draw") {
        std::fprintf(stderr, "--logits takes all, top1 or draw, not '%s'\n", v.c_str());
        return 2;
      }
      top1 = v == "top1";
      draw = v == "draw";
    }
    else if (a == "--prefill") prefill = parse_list(v);
    else if (a == "--prefill-chunk") chunk = std::stoll(v);
    else if (a == "--scan") scan_tokens = std::stoll(v);
    else if (a == "--matmul-rows") matmul_rows = std::stoll(v);
    else if (a == "--attn-tokens") attn_tokens = parse_list(v);
    else if (a == "--decode-steps") steps = std::stoi(v);
    else if (a == "--decode-ctx" || a == "--batch8-ctx") decode_ctx = parse_list(v);
    else if (a == "--batches") batches = parse_list(v);
    else if (a == "--json") json_path = v;
    else if (a == "--dir") dir = v;
    else { std::fprintf(stderr, "unknown option %s\n", a.c_str()); return 2; }
  }
  try {
    const DType kv_type = kv_name == "f32" ? DType::F32 : kv_name == "q8" ? DType::I8 : DType::BF16;
    if (kv_name != "f32" && kv_name != "q8" && kv_name != "bf16") throw Error("--kv: expected bf16, f32 or q8");
    if (cuda_device_count() == 0) throw Error("no CUDA device");
    cudaDeviceProp prop{};
    ck(cudaGetDeviceProperties(&prop, 0), "props");
    const double bw = measure_copy_bw(), gemm = measure_gemm_rate();
    std::string attention;  // the prefill kernel the backend picks for these settings
    {
      const auto k0 = make_cuda_kernels(0);
      if (f16_rows < 0) f16_rows = k0->matmul_f16_rows();
      if (ssd_tf32 < 0) ssd_tf32 = k0->scan_tf32() ? 1 : 0;
      k0->set_attention_tf32(tf32);
      k0->set_kv_cache_dtype(kv_type);
      attention = k0->prefill_attention();
    }
    const std::string matmul = !split ? "bf16 (activations rounded once)"
                               : f16_rows == 0 ? "bf16x2 (activations as hi + lo bf16)"
                                               : "bf16x2 (hi + lo), fp16 from " + std::to_string(f16_rows) + " rows";
    std::printf("device: %s, %d SMs, %.1f GiB; copy %.0f GB/s (read+write); bf16 GEMM 8192^3 %.0f TFLOP/s\n"
                "matmul %s; prefill attention %s; SSD scan %s; decode graphs %s; KV cache %s; decode logits %s; prefill in "
                "chunks of %lld tokens\n",
                prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, bw, gemm,
                matmul.c_str(),
                attention.c_str(), ssd_tf32 == 1 ? "tf32" : "f32", graphs ? "on" : "off", kv_name.c_str(),
                top1 ? "top1 (greedy)" : draw ? "draw" : "all", static_cast<long long>(chunk));
    std::ofstream js;
    if (!json_path.empty()) js.open(json_path);
    auto emit = [&](nlohmann::json j) {
      j["device"] = prop.name;
      j["copy_GBps"] = bw;
      j["gemm_TFLOPs"] = gemm;
      j["matmul"] = matmul;
      j["attention"] = attention;
      j["ssd"] = ssd_tf32 == 1 ? "tf32" : "f32";
      j["graphs"] = graphs;
      j["logits"] = top1 ? "top1" : draw ? "draw" : "all";
      j["kv_cache"] = kv_name;
      if (js) js << j.dump() << "\n" << std::flush;
    };
    for (const Shape& s : all_shapes()) {
      if (models.find(s.name) == std::string::npos) continue;
      const ModelConfig c = make_config(s);
      const fs::path mdir = fs::path(dir) / ("fh1-bench-" + s.name);
      fs::create_directories(mdir);
      double t0 = now();
      const fs::path file = write_checkpoint(c, mdir);
      auto k = make_cuda_kernels(0);
      k->set_matmul_split(split);
      k->set_matmul_f16_rows(f16_rows);
      k->set_attention_tf32(tf32);
      k->set_scan_tf32(ssd_tf32 == 1);
      k->set_decode_graphs(graphs);
      k->set_kv_cache_dtype(kv_type);
      Model model = Model::from_store(c, TensorStore::open_files({file}), *k);
      k->randomize_weights(42);
      fs::remove(file);
      const CudaMemoryStats ms0 = k->memory_stats();
      if (true) {  // per-launch cost of a trivial op, host-timed
        Buffer a(*k, 1024), b(*k, 1024);
        k->synchronize();
        const double l0 = now();
        for (int i = 0; i < 2000; ++i) k->scale(a.data(), 1024, 1.0f, b.data());
        const double host_us = (now() - l0) / 2000 * 1e6;
        k->synchronize();
        const double all_us = (now() - l0) / 2000 * 1e6;
        std::printf("launch cost of one small op: %.2f us host (enqueue), %.2f us until done\n", host_us, all_us);
      }
      {  // the decode GEMV alone: matrices of this model's shapes, enough copies to defeat the L2
        const int64_t d = c.hidden_size, ff = c.intermediate_size, in_dim = c.in_proj_dim();
        std::printf("decode matmul alone (bf16 weights, float32 activations; GB/s of weights read):");
        for (auto [N, K] : {std::pair{in_dim, d}, std::pair{ff, d}, std::pair{d, ff}}) {
          const size_t bytes = size_t(N) * K * 2;
          const int copies = static_cast<int>(std::max<size_t>(2, (size_t(512) << 20) / bytes));
          std::vector<void*> mats(static_cast<size_t>(copies));
          for (auto& m : mats) {
            ck(cudaMalloc(&m, bytes), "malloc");
            ck(cudaMemset(m, 0x3c, bytes), "memset");
          }
          for (int64_t T : {1, 2, 4, 8, 16}) {
            Buffer x(*k, static_cast<size_t>(T * K)), y(*k, static_cast<size_t>(T * N));
            k->fill_random(x.data(), x.size(), 1.0f, 5);
            auto once = [&] {
              for (void* m : mats) k->matmul(x.data(), K, T, WeightView{DType::BF16, m, N, K}, nullptr, y.data());
            };
            once();
            k->synchronize();
            const double a = now();
            for (int r = 0; r < 3; ++r) once();
            k->synchronize();
            const double dt = (now() - a) / (3.0 * copies);
            std::printf("  %lldx%lld T=%lld: %.0f GB/s (%.1f us)", static_cast<long long>(N), static_cast<long long>(K),
                        static_cast<long long>(T), bytes / dt / 1e9, dt * 1e6);
            emit({{"model", s.name}, {"kind", "gemv"}, {"N", N}, {"K", K}, {"rows", T}, {"GBps", bytes / dt / 1e9},
                  {"us", dt * 1e6}});
          }
          for (void* m : mats) cudaFree(m);
        }
        std::printf("\n");
      }
      if (matmul_rows > 0) {  // the prefill matmul alone, at each of the model's weight shapes
        const int64_t d = c.hidden_size, ff = c.intermediate_size, in_dim = c.in_proj_dim(), T = matmul_rows;
        const int64_t qd = c.q_dim(), ds = c.mamba_d_ssm;
        std::printf("prefill matmul alone, %lld rows (TFLOP/s, ms):", static_cast<long long>(T));
        for (auto [N, K] : {std::pair{in_dim, d}, std::pair{qd, d}, std::pair{d, qd}, std::pair{d, ds}, std::pair{ff, d},
                            std::pair{d, ff}}) {
          std::vector<uint16_t> host(static_cast<size_t>(N * K));
          for (size_t i = 0; i < host.size(); ++i) host[i] = f32_to_bf16(((i * 2654435761u) % 2001 - 1000.0f) * 2e-5f);
          TensorView tv;
          tv.name = "bench matrix";
          tv.dtype = DType::BF16;
          tv.shape = {N, K};
          tv.data = reinterpret_cast<const uint8_t*>(host.data());
          tv.nbytes = host.size() * 2;
          const WeightView w = k->bind_weight(tv);
          Buffer x(*k, static_cast<size_t>(T * K)), y(*k, static_cast<size_t>(T * N));
          k->fill_random(x.data(), x.size(), 1.0f, 7);
          double best = 1e30;
          for (int r = 0; r < 6; ++r) {
            k->synchronize();
            const double a = now();
            k->matmul(x.data(), K, T, w, nullptr, y.data());
            k->synchronize();
            if (r > 0) best = std::min(best, now() - a);
          }
          const double tf = 2.0 * T * N * K / best / 1e12;
          std::printf("  %lldx%lld: %.0f (%.2f)", static_cast<long long>(N), static_cast<long long>(K), tf, best * 1e3);
          emit({{"model", s.name}, {"kind", "prefill_matmul"}, {"N", N}, {"K", K}, {"rows", T}, {"TFLOPs", tf},
                {"ms", best * 1e3}});
        }
        std::printf("\n");
      }
      if (scan_tokens > 0) {  // one layer's Mamba-2 scan alone (as a prompt runs it: the SSD when long)
        const int64_t T = scan_tokens, H = c.mamba_n_heads, P = c.mamba_d_head, N = c.mamba_d_state;
        const int64_t G = c.mamba_n_groups, ds = H * P, ld = ds + 2 * G * N;
        Buffer xbc(*k, size_t(T * ld)), dt(*k, size_t(T * H)), y(*k, size_t(T * ds)), state(*k, size_t(ds * N));
        Buffer A(*k, size_t(H)), D(*k, size_t(H)), bias(*k, size_t(H));
        k->fill_random(xbc.data(), xbc.size(), 1.0f, 11);
        k->fill_random(dt.data(), dt.size(), 1.0f, 12);
        std::vector<float> a(static_cast<size_t>(H)), one(static_cast<size_t>(H), 1.0f), b(static_cast<size_t>(H), -2.0f);
        for (int64_t h = 0; h < H; ++h) a[size_t(h)] = -std::exp(-1.0f + 2.0f * float(h) / float(H));
        k->from_host(A.data(), a.data(), a.size());
        k->from_host(D.data(), one.data(), one.size());
        k->from_host(bias.data(), b.data(), b.size());
        const SsmParams sp{int(H), int(P), int(G), int(N), c.mamba_chunk_size, A.data(), D.data(), bias.data(), 0.0f,
                           INFINITY};
        double best = 1e30;
        for (int r = 0; r < 6; ++r) {
          k->synchronize();
          const double t0 = now();
          k->ssm_scan(xbc.data(), xbc.data() + ds, xbc.data() + ds + G * N, ld, dt.data(), H, T, sp, state.data(), y.data());
          k->synchronize();
          if (r > 0) best = std::min(best, now() - t0);
        }
        const double flops = 4.0 * double(T) * ds * N;  // the recurrence's products: state update and output
        std::printf("scan alone (one layer, %lld tokens, %lld heads x %lld x %lld state): %.2f ms, %.1f TFLOP/s of "
                    "recurrence products\n", static_cast<long long>(T), static_cast<long long>(H),
                    static_cast<long long>(P), static_cast<long long>(N), best * 1e3, flops / best / 1e12);
        emit({{"model", s.name}, {"kind", "scan"}, {"tokens", T}, {"ms", best * 1e3}});
      }
      // Bytes a decode step must read at least: every matrix once (embedding: one row).
      uint64_t mat_bytes = 0, mat_params = 0;
      for (const auto& [name, t] : model.tensors().all())
        if (t->shape.size() == 2 && name != "model.embed_tokens.weight") { mat_bytes += t->nbytes; mat_params += t->numel(); }
      if (c.tie_word_embeddings) { mat_bytes += uint64_t(c.vocab_size) * c.hidden_size * 2; mat_params += uint64_t(c.vocab_size) * c.hidden_size; }
      const uint64_t lm_params = uint64_t(c.vocab_size) * c.hidden_size;  // lm_head (tied or not)
      const uint64_t ssm_bytes = uint64_t(c.num_hidden_layers) * c.mamba_n_heads * c.mamba_d_head * c.mamba_d_state * 4 * 2;
      std::printf("\n== %s: %.2fB parameters, weights %.2f GB on device, loaded in %.1f s%s%s\n", s.name.c_str(),
                  model.parameter_count() / 1e9, ms0.weight_bytes / 1e9, now() - t0,
                  *s.guessed ? "; guessed: " : "", s.guessed);
      std::printf("%-8s %5s %8s %12s %10s %10s %10s\n", "what", "batch", "tokens", "tok/s", "ms", "%ceiling", "GPU GB");
      for (int64_t T : attn_tokens) {  // one layer's prefill attention alone
        if (T <= 0) continue;
        const int H = c.num_attention_heads, Hkv = c.num_key_value_heads, hd = c.head_dim;
        const int64_t qd = c.q_dim(), kvd = c.kv_dim();
        Buffer q(*k, size_t(T * qd)), kv(*k, size_t(T * kvd)), out(*k, size_t(T * qd));
        Buffer kc(*k, k->kv_cache_floats(T, kvd)), vc(*k, k->kv_cache_floats(T, kvd));
        k->fill_random(q.data(), q.size(), 1.0f, 13);
        k->fill_random(kv.data(), kv.size(), 1.0f, 14);
        k->kv_write(kc.data(), 0, kv.data(), T, kvd);
        k->fill_random(kv.data(), kv.size(), 1.0f, 15);
        k->kv_write(vc.data(), 0, kv.data(), T, kvd);
        double best = 1e30;
        for (int r = 0; r < 6; ++r) {
          k->synchronize();
          const double a = now();
          k->attention(q.data(), qd, T, kc.data(), vc.data(), 0, H, Hkv, hd, 1.0f / std::sqrt(float(hd)), out.data());
          k->synchronize();
          if (r > 0) best = std::min(best, now() - a);
        }
        const double tf = 4.0 * (double(T) * T / 2) * hd * H / best / 1e12;
        std::printf("%-8s %5d %8lld %12.1f %10.3f %7.0f TF/s  (one layer's attention alone: %d heads, %d KV heads, head "
                    "size %d; TFLOP/s of the causal products)\n", "attn", 1, static_cast<long long>(T), T / best, best * 1e3,
                    tf, H, Hkv, hd);
        emit({{"model", s.name}, {"kind", "attention"}, {"tokens", T}, {"ms", best * 1e3}, {"TFLOPs", tf}});
      }
      const int64_t max_prefill = prefill.empty() ? 0 : *std::max_element(prefill.begin(), prefill.end());
      const std::vector<int32_t> ids = [&] {
        std::vector<int32_t> v(static_cast<size_t>(std::max<int64_t>(max_prefill, 4096) + steps + 256));
        std::mt19937 r(3);
        for (auto& x : v) x = static_cast<int32_t>(r() % static_cast<uint32_t>(c.vocab_size));
        return v;
      }();
      {  // warm-up: every kernel a timed run takes is loaded (CUDA loads modules lazily), the
         // fp16 matmul and the chunked SSD of long prompts included
        SequenceState st = model.new_state(2048 + 8);
        model.forward(st, std::span<const int32_t>(ids).subspan(0, 2048));
        for (int i = 0; i < 3; ++i) model.forward(st, std::span<const int32_t>(ids).subspan(2048 + i, 1));
      }
      // ---- prefill: T tokens in calls of at most `chunk` tokens ----
      for (int64_t T : prefill) {
        if (T <= 0) continue;  // --prefill 0: no prefill
        const uint64_t need = uint64_t(T + steps + 8) * kv_bytes_per_token(c, *k);
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        if (need > fr) {
          std::printf("prefill  %5d %8lld   skipped: KV cache %.1f GB > free %.1f GB\n", 1, static_cast<long long>(T),
                      need / 1e9, fr / 1e9);
          continue;
        }
        SequenceState st = model.new_state(T + steps + 8);
        k->reset_peak();
        double best = 1e30;
        std::vector<float> last;  // the last row's logits: a check that the timed work computed numbers
        // The best of several runs up to 32K tokens: the first run at a new T meets cuBLAS's GEMMs
        // for that many rows for the first time, and loading them took ~38 ms of a 1.5B-Deep 8K
        // prefill of ~120 (H200; a server pays it once per shape). Longer prompts run in chunks
        // of at most 32K, whose GEMMs a 32K row has loaded, and take long enough not to care.
        const int reps = T <= 4096 ? 3 : T <= 32768 ? 2 : 1;
        for (int r = 0; r < reps; ++r) {
          st.reset();
          const double a = now();
          for (int64_t at = 0; at < T; at += chunk) {
            const int64_t n = std::min(chunk, T - at);
            last = model.forward(st, std::span<const int32_t>(ids).subspan(static_cast<size_t>(at), static_cast<size_t>(n)));
          }
          best = std::min(best, now() - a);
        }
        // The FLOPs the prompt's output needs: every layer's matrices on all T rows, lm_head on the
        // one row whose logits are computed, the causal attention's two products. (Up to
        // 2026-12-07 lm_head was counted on all T rows, which the forward never computes: 1-7 %
        // more than was done. The SSD's own products are not counted either way.)
        const double flops = 2.0 * double(mat_params - lm_params) * T + 2.0 * double(lm_params) +
                             4.0 * (double(T) * T / 2) * c.head_dim * c.num_attention_heads * c.num_hidden_layers;
        const double pct = 100.0 * flops / best / (gemm * 1e12);
        const CudaMemoryStats m = k->memory_stats();
        const double used = device_used() / 1e9;
        // Non-finite logits mean the run measured broken arithmetic (NaNs also change the GEMMs'
        // power draw and so the clocks: docs/cuda.md, "A race made the prompts NaN").
        size_t bad = 0;
        double sq = 0;
        for (float v : last) {
          if (!std::isfinite(v)) ++bad;
          else sq += double(v) * v;
        }
        const double rms = last.size() > bad ? std::sqrt(sq / double(last.size() - bad)) : 0.0;
        if (bad) ++prompts_not_finite;
        std::printf("%-8s %5d %8lld %12.1f %10.1f %9.1f%% %10.2f  (KV %.2f GB, peak activations %.2f GB, fp16 weight copies %.2f GB, logits rms %.3g%s)\n",
                    "prefill", 1, static_cast<long long>(T), T / best, best * 1e3, pct, used,
                    double(T) * kv_bytes_per_token(c, *k) / 1e9, m.peak_live_bytes / 1e9, m.f16_copy_bytes / 1e9,
                    rms, bad ? (", " + std::to_string(bad) + " NOT FINITE").c_str() : "");
        emit({{"model", s.name}, {"kind", "prefill"}, {"tokens", T}, {"chunk", chunk}, {"tokens_per_s", T / best},
              {"ms", best * 1e3}, {"model_TFLOP", flops / 1e12}, {"pct_of_gemm_rate", pct}, {"gpu_used_GB", used},
              {"weights_GB", m.weight_bytes / 1e9}, {"kv_GB", double(T) * kv_bytes_per_token(c, *k) / 1e9},
              {"peak_live_GB", m.peak_live_bytes / 1e9}, {"f16_copies_GB", m.f16_copy_bytes / 1e9},
              {"logits_rms", rms}, {"logits_not_finite", bad}});
        k->trim();
      }
      // ---- decode: B sequences of `ctx` tokens each (KV cache filled with random values, no
      // prefill), one token per sequence per step ----
      for (int64_t ctx : decode_ctx) {
        if (ctx <= 0) continue;  // --decode-ctx 0: no decode
        for (int64_t B : batches) {
          const uint64_t need = uint64_t(B) * uint64_t(ctx + steps + 8) * kv_bytes_per_token(c, *k);
          size_t fr = 0, tot = 0;
          cudaMemGetInfo(&fr, &tot);
          fr += k->memory_stats().f16_copy_bytes;  // the fp16 weight copies give way to the caches
          if (need + (size_t(4) << 30) > fr) {
            std::printf("decode   %5lld %8lld   skipped: KV caches %.1f GB > free %.1f GB - 4\n",
                        static_cast<long long>(B), static_cast<long long>(ctx), need / 1e9, fr / 1e9);
            continue;
          }
          std::vector<SequenceState> states;
          for (int64_t b = 0; b < B; ++b) {
            states.push_back(model.new_state(ctx + steps + 8));
            SequenceState& st = states.back();
            for (int l = 0; l < c.num_hidden_layers; ++l) {
              k->fill_random_kv(st.k_cache(l), ctx, c.kv_dim(), 1.0f, 11 + 977 * b + l);
              k->fill_random_kv(st.v_cache(l), ctx, c.kv_dim(), 1.0f, 13 + 991 * b + l);
              k->fill_random(st.ssm_state(l), static_cast<size_t>(c.mamba_n_heads) * c.mamba_d_head * c.mamba_d_state,
                             0.1f, 17 + 7 * b + l);
            }
            st.advance(ctx);
          }
          std::vector<int32_t> tok(static_cast<size_t>(B));
          std::vector<BatchItem> items(static_cast<size_t>(B));
          auto step = [&](int i) {
            for (int64_t b = 0; b < B; ++b) {
              tok[static_cast<size_t>(b)] = ids[static_cast<size_t>(i + b) % ids.size()];
              items[static_cast<size_t>(b)] =
                  BatchItem{&states[static_cast<size_t>(b)], std::span<const int32_t>(&tok[static_cast<size_t>(b)], 1), false};
            }
            if (top1) {
              model.forward_top(items, 1);
            } else if (draw) {
              Model::TopRequest req;
              req.k = 0;
              req.inv_t.assign(static_cast<size_t>(B), 1.0);
              req.u.assign(static_cast<size_t>(B), 0.5);
              model.forward_top(items, req);
            } else {
              model.forward(items);
            }
          };
          const size_t cap0 = k->graphs_captured();
          // Warm-up: captures this shape's graphs: the step launched at once, and the step
          // recorded ahead of its token, which is captured the first time it runs (two steps left
          // that one to the timed steps at some shapes).
          for (int i = 0; i < 4; ++i) step(i);
          const size_t cap1 = k->graphs_captured();
          double best = 1e30;
          const int reps = 2;
          for (int r = 0; r < reps; ++r) {
            const double a = now();
            for (int i = 0; i < steps / reps; ++i) step(4 + r * steps + i);
            best = std::min(best, (now() - a) / (steps / reps));
          }
          const uint64_t kv_bytes = uint64_t(ctx) * kv_bytes_per_token(c, *k);
          const double floor_s = double(mat_bytes + uint64_t(B) * (kv_bytes + ssm_bytes)) / (bw * 1e9);
          const double tps = double(B) / best;
          const double used = device_used() / 1e9;
          std::printf("%-8s %5lld %8lld %12.1f %10.3f %9.1f%% %10.2f  (graphs captured: %zu, then %zu while timed)\n",
                      "decode", static_cast<long long>(B), static_cast<long long>(ctx), tps, best * 1e3,
                      100.0 * floor_s / best, used, cap1 - cap0, k->graphs_captured() - cap1);
          emit({{"model", s.name}, {"kind", "decode"}, {"batch", B}, {"context", ctx}, {"tokens_per_s", tps},
                {"ms_per_step", best * 1e3}, {"hbm_floor_ms", floor_s * 1e3}, {"pct_of_floor", 100.0 * floor_s / best},
                {"gpu_used_GB", used}, {"kv_GB", double(B) * kv_bytes / 1e9}});
          states.clear();
          k->trim();
        }
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda-bench: %s\n", e.what());
    return 1;
  }
  if (prompts_not_finite) {
    std::fprintf(stderr, "cuda-bench: %zu prefill(s) gave non-finite logits: their times are not of real arithmetic\n",
                 prompts_not_finite);
    return 3;
  }
  return 0;
}
