// Whether cuBLAS's default algorithm choice leaves prefill GEMM time on the table: for each
// prefill matmul shape of the release sizes (the engine's fp16 GEMM, y[T, N] = x[T, K] W^T with
// fp16 operands, float32 sums and a float32 or fp16 output), the time of cublasGemmEx with
// CUBLAS_GEMM_DEFAULT against every algorithm cublasLt's heuristic offers (up to 32, timed each),
// with the same 32 MiB workspace. Also whether each candidate's output is bit for bit the
// default's, and whether it splits K. The measurement behind docs/cuda.md's note on GEMM
// algorithms.
// Build: part of the CUDA build (target gemm-algo-probe). Run: build-cuda/gemm-algo-probe [T ...]
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

namespace {

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}
void ck(cublasStatus_t e, const char* what) {
  if (e != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "%s: cuBLAS status %d\n", what, static_cast<int>(e));
    std::exit(1);
  }
}

__global__ void fill_f16(__half* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    p[i] = __float2half((static_cast<float>(h & 0xffff) / 65535.0f - 0.5f) * 2.0f);
  }
}

// *count += the number of 32-bit words where a and b differ.
__global__ void count_diff(const unsigned* a, const unsigned* b, size_t n, unsigned long long* count) {
  unsigned long long c = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    c += a[i] != b[i];
  if (c) atomicAdd(count, c);
}

struct Shape {
  const char* model;
  const char* what;
  int N, K;
};

// Best of `reps` timed runs (after one warm-up) of f, in ms.
template <class F>
float time_ms(F&& f, cudaStream_t s, int reps = 8) {
  cudaEvent_t a, b;
  ck(cudaEventCreate(&a), "event");
  ck(cudaEventCreate(&b), "event");
  f();
  float best = 1e30f;
  for (int r = 0; r < reps; ++r) {
    ck(cudaEventRecord(a, s), "record");
    f();
    ck(cudaEventRecord(b, s), "record");
    ck(cudaEventSynchronize(b), "sync");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, a, b), "elapsed");
    best = std::min(best, ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> Ts;
  for (int i = 1; i < argc; ++i) Ts.push_back(std::atoi(argv[i]));
  if (Ts.empty()) Ts = {8192, 32768};
  // in_proj, q, k/v, o_proj, out_proj, gate/up, down (bench/cuda_bench.cpp's shapes).
  const std::vector<Shape> shapes = {
      {"0.5b", "in_proj", 3352, 1024}, {"0.5b", "q", 512, 1024},        {"0.5b", "k,v", 128, 1024},
      {"0.5b", "o_proj", 1024, 512},   {"0.5b", "out_proj", 1024, 1536}, {"0.5b", "gate,up", 2048, 1024},
      {"0.5b", "down", 1024, 2048},    {"1.5b-deep", "in_proj", 3608, 1280}, {"1.5b-deep", "q", 768, 1280},
      {"1.5b-deep", "k,v", 256, 1280}, {"1.5b-deep", "o_proj", 1280, 768}, {"1.5b-deep", "out_proj", 1280, 1536},
      {"1.5b-deep", "gate,up", 3072, 1280}, {"1.5b-deep", "down", 1280, 3072}, {"7b", "in_proj", 6680, 3072},
      {"7b", "q", 1536, 3072},         {"7b", "k,v", 256, 3072},         {"7b", "o_proj", 3072, 1536},
      {"7b", "out_proj", 3072, 3072},  {"7b", "gate,up", 12288, 3072},   {"7b", "down", 3072, 12288}};
  const int maxT = *std::max_element(Ts.begin(), Ts.end());
  size_t maxW = 0, maxN = 0, maxK = 0;
  for (const Shape& s : shapes) {
    maxW = std::max(maxW, size_t(s.N) * s.K);
    maxN = std::max(maxN, size_t(s.N));
    maxK = std::max(maxK, size_t(s.K));
  }
  __half *w, *x;
  void* y;
  void* ws;
  const size_t ws_bytes = size_t(32) << 20;
  ck(cudaMalloc(&w, maxW * 2), "malloc");
  ck(cudaMalloc(&x, size_t(maxT) * maxK * 2), "malloc");
  ck(cudaMalloc(&y, size_t(maxT) * maxN * 4), "malloc");
  ck(cudaMalloc(&ws, ws_bytes), "malloc");
  void* yref;
  unsigned long long* ndiff;
  ck(cudaMalloc(&yref, size_t(maxT) * maxN * 4), "malloc");
  ck(cudaMalloc(&ndiff, sizeof(unsigned long long)), "malloc");
  fill_f16<<<1024, 256>>>(w, maxW, 1);
  fill_f16<<<1024, 256>>>(x, size_t(maxT) * maxK, 2);
  cudaStream_t s;
  ck(cudaStreamCreate(&s), "stream");
  cublasHandle_t blas;
  ck(cublasCreate(&blas), "cublasCreate");
  ck(cublasSetStream(blas, s), "set stream");
  ck(cublasSetWorkspace(blas, ws, ws_bytes), "set workspace");
  cublasLtHandle_t lt;
  ck(cublasLtCreate(&lt), "cublasLtCreate");
  std::printf(
      "model      matmul     out   N      K      T      default ms  TFLOP/s | heur[0] ms | best ms (index of n, split-K, "
      "bits as default) TFLOP/s  best/default | best with the default's bits  best/default\n");
  double sum_default = 0, sum_best = 0, sum_same = 0;
  for (int T : Ts)
    for (const Shape& sh : shapes)
      for (int out16 = 0; out16 < 2; ++out16) {
        if (out16 && std::string_view(sh.what) != "gate,up") continue;
        const cudaDataType_t yt = out16 ? CUDA_R_16F : CUDA_R_32F;
        const float alpha = 0.5f, beta = 0.0f;
        const auto by_default = [&] {
          ck(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, sh.N, T, sh.K, &alpha, w, CUDA_R_16F, sh.K, x, CUDA_R_16F,
                          sh.K, &beta, y, yt, sh.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "gemm");
        };
        const float t_def = time_ms(by_default, s);
        const size_t out_words = (size_t(T) * sh.N * (out16 ? 2 : 4) + 3) / 4;
        ck(cudaMemcpyAsync(yref, y, out_words * 4, cudaMemcpyDeviceToDevice, s), "copy");
        cublasLtMatmulDesc_t op;
        ck(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
        const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        ck(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "transa");
        ck(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "transb");
        cublasLtMatrixLayout_t la, lb, lc;
        ck(cublasLtMatrixLayoutCreate(&la, CUDA_R_16F, sh.K, sh.N, sh.K), "layout a");
        ck(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16F, sh.K, T, sh.K), "layout b");
        ck(cublasLtMatrixLayoutCreate(&lc, yt, sh.N, T, sh.N), "layout c");
        cublasLtMatmulPreference_t pref;
        ck(cublasLtMatmulPreferenceCreate(&pref), "pref");
        ck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                sizeof ws_bytes),
           "pref ws");
        cublasLtMatmulHeuristicResult_t res[32];
        int n = 0;
        ck(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 32, res, &n), "heuristic");
        float t0 = 0, best = 1e30f, best_same = 1e30f;
        int best_i = -1, best_split = 0;
        bool best_bits = false;
        for (int i = 0; i < n; ++i) {
          if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
          const auto run = [&] {
            ck(cublasLtMatmul(lt, op, &alpha, w, la, x, lb, &beta, y, lc, y, lc, &res[i].algo, ws, ws_bytes, s),
               "lt matmul");
          };
          const float t = time_ms(run, s, 5);
          ck(cudaMemsetAsync(ndiff, 0, sizeof *ndiff, s), "memset");
          count_diff<<<512, 256, 0, s>>>(static_cast<const unsigned*>(y), static_cast<const unsigned*>(yref), out_words,
                                         ndiff);
          unsigned long long nd = 0;
          ck(cudaMemcpyAsync(&nd, ndiff, sizeof nd, cudaMemcpyDeviceToHost, s), "copy");
          ck(cudaStreamSynchronize(s), "sync");
          int split = 0;
          size_t got = 0;
          cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof split, &got);
          if (i == 0) t0 = t;
          if (t < best) {
            best = t;
            best_i = i;
            best_split = split;
            best_bits = nd == 0;
          }
          if (nd == 0) best_same = std::min(best_same, t);
        }
        const double flop = 2.0 * T * double(sh.N) * sh.K;
        std::printf(
            "%-10s %-10s %-5s %-6d %-6d %-6d %8.4f  %6.0f   | %8.4f   | %8.4f (%2d of %2d, %d, %s)  %6.0f   %.3f | %8.4f  "
            "%.3f\n",
            sh.model, sh.what, out16 ? "f16" : "f32", sh.N, sh.K, T, t_def, flop / t_def / 1e9, t0, best, best_i, n,
            best_split, best_bits ? "same" : "differ", flop / best / 1e9, best / t_def, best_same, best_same / t_def);
        sum_default += t_def;
        sum_best += std::min(best, t_def);
        sum_same += std::min(best_same, t_def);
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la);
        cublasLtMatrixLayoutDestroy(lb);
        cublasLtMatrixLayoutDestroy(lc);
        cublasLtMatmulDescDestroy(op);
      }
  std::printf("all shapes once: default %.3f ms, best %.3f ms (%.3f), best with the default's bits %.3f ms (%.3f)\n",
              sum_default, sum_best, sum_best / sum_default, sum_same, sum_same / sum_default);
  return 0;
}
