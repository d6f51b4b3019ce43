// Launchers of the CUDA backend's device kernels (internal to src/kernels/cuda). Every pointer
// is device memory; every launcher queues work on `s` and checks the launch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "kernels/kernels.h"

namespace fh1::cuda {

// The KV caches' element type (Kernels::kv_cache_dtype()): float32, bf16, or 8 bits with block
// scales (quant/kv_q8.h).
enum class KvType : uint8_t { F32, BF16, Q8 };

// Throws fh1::Error with the call's text and CUDA's message.
void check(cudaError_t e, const char* what);
#define FH1_CUDA(call) ::fh1::cuda::check((call), #call)
void check_launch(const char* what);
// Throws fh1::Error with `what` and cuBLAS's status unless it is CUBLAS_STATUS_SUCCESS.
void check_blas(cublasStatus_t s, const char* what);

// Programmatic dependent launch: every kernel of this backend is launched through launch() with
// the programmatic-serialization attribute and begins with FH1_PDL_ENTER(): it waits for the grid
// before it to finish (and its writes to be visible), then lets the grid after it start to
// launch. The launch latency of a kernel thus overlaps the kernel before it (the decode step is a
// chain of ~30 small kernels per layer). FH1_CUDA_PDL=0 launches plainly.
#define FH1_PDL_ENTER() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
bool pdl_enabled();
// Launches in its scope (on this thread) go without the PDL attribute when `on`: for a kernel
// that would only sit on the SMs waiting for the one before, holding the slots that another
// chain's kernels need.
class PdlOff {
 public:
  explicit PdlOff(bool on);
  ~PdlOff();
  PdlOff(const PdlOff&) = delete;
  PdlOff& operator=(const PdlOff&) = delete;

 private:
  bool on_;
};
bool pdl_now();  // pdl_enabled() and no PdlOff in force

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_now() ? 1 : 0;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), "cudaLaunchKernelEx");
}

// launch() of a kernel that may need over 48 KB of dynamic shared memory: its limit raised
// (current device) on the first launch that needs more than the last raise.
template <typename... KArgs, typename... Args>
void launch_big_smem(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args&&... args) {
  static std::mutex m;
  static std::map<const void*, size_t> raised;
  {
    std::lock_guard<std::mutex> lock(m);
    size_t& r = raised[reinterpret_cast<const void*>(kernel)];
    if (smem > 48 * 1024 && smem > r) {
      check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
            "cudaFuncSetAttribute (shared memory)");
      r = smem;
    }
  }
  launch(kernel, grid, block, smem, s, std::forward<Args>(args)...);
}

// Conversions and dense element-wise ops.
void f32_to_bf16(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* out, cudaStream_t s);
// Activations as two bf16 parts (hi + lo) for the split matmul; y = first T rows + last T rows.
void f32_to_bf16_split(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* hi, uint16_t* lo, cudaStream_t s);
void sum_halves(const float* y2, int64_t T, int64_t N, const float* bias, float* y, cudaStream_t s);
// The prefill matmul as one fp16 GEMM (cuda_gemm_f16.cu): W bf16 [N, K] and x float32, both
// scaled by powers of two into fp16 (W exactly, x to 11 bits); y[T, N] float32 = x W^T.
// f16_shift_of_bf16 gives W's shift (synchronous; scratch: one device uint32), and
// bf16_to_f16_scaled W's fp16 copy: out[i] = fp16(w[i] * 2^shift), n halves.
int f16_shift_of_bf16(const uint16_t* w, size_t n, uint32_t* scratch, cudaStream_t s);
void bf16_to_f16_scaled(const uint16_t* w, size_t n, int shift, uint16_t* out, cudaStream_t s);
// The same for W with each row i multiplied by v[i] (v: N floats on the device): the shift of
// max |w_ik v_i|, and out = fp16(w_ik * v_i * 2^shift) (rounded once more than W alone: 2^-12).
int f16_shift_of_bf16_rows_scaled(const uint16_t* w, int64_t N, int64_t K, const float* v, uint32_t* scratch,
                                  cudaStream_t s);
void bf16_to_f16_rows_scaled(const uint16_t* w, int64_t N, int64_t K, const float* v, int shift, uint16_t* out,
                             cudaStream_t s);
class GemmAlgos;  // cuda_gemm_lt.h
// What the prefill's fp16 GEMMs run with: the cuBLAS handle (stream and workspace set to the
// caller's), the table of tuned cublasLt algorithms (null: cublasGemmEx's choice always) and
// the handle's workspace, which cublasLt uses too.
struct GemmRun {
  cublasHandle_t blas;
  GemmAlgos* algos;
  void* ws;
  size_t ws_bytes;
};
struct F16Scratch {
  uint16_t* x16;  // T x K halves
  float* consts;  // 3 floats of device memory: the max's bits, alpha, beta
};
// w16: W's fp16 copy [N, K] (bf16_to_f16_scaled with w_shift). x16_ready: scratch.x16 and the
// max's bits already hold this x (the previous call's, when the same activations feed several
// matrices); only alpha is computed again. max_ready: the max's bits hold x's (the op that
// wrote x took it, see scale), beta is zero; x is converted without a pass of its own for the max.
// y = (x * x_scale) W^T: x_scale is taken into the GEMM's alpha.
void gemm_f16(const GemmRun& g, const uint16_t* w16, int64_t N, int64_t K, int w_shift, const float* x,
              int64_t ldx, int64_t T, float x_scale, float* y, const F16Scratch& scratch, bool x16_ready,
              bool max_ready, cudaStream_t s);
// An fp16 GEMM's input with a shift per row instead of one per tensor, made in one pass
// (cuda_gemm_f16.cu): x16[t] = fp16(v[t] * 2^s_t), s_t = shift_for(max_k |v[t, k]|), rows[t] =
// 2^-s_t; v = up * silu(gate * gs) (silu_mul's, a = gate, b = up), a * silu(b) (gate_silu's,
// a = y, b = z) or a itself (Copy; b unused). The float32 values are those of the element-wise
// ops; nothing but the fp16 rows is written. rows_to_f16_fits: K, a's stride and alignment allow
// it (a as float4s; b any stride >= K).
enum class RowsOp { SiluMul, GateSilu, Copy };
bool rows_to_f16_fits(RowsOp op, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K);
void rows_to_f16(RowsOp op, const float* a, int64_t lda, const float* b, int64_t ldb, float gs, int64_t T, int64_t K,
                 uint16_t* x16, float* rows, cudaStream_t s);
// y[T, N] = 2^-w_shift x16 W^T (the fp16 GEMM of rows_to_f16's x16; its rows still to be
// multiplied by rows[t]).
void gemm_f16_rows(const GemmRun& g, const uint16_t* w16, int64_t N, int64_t K, int w_shift, const uint16_t* x16,
                   int64_t T, float* y, cudaStream_t s);
// The MLP's gate and up kept in fp16 (CudaKernelsImpl::mlp): y16[T, N] = 2^-out_exp x16 W^T,
// float32 accumulate. With w16 scaled by 2^w_shift, x16's largest |value| below 2^15 (as every
// fp16 GEMM input here is) and 2^out_exp >= max_n sum_k |w16[n, k]| (bf16_rows_l1_max), no
// output exceeds 2^15: fp16 cannot overflow, and the typical output lies far above its
// subnormals.
void gemm_f16_out16(const GemmRun& g, const uint16_t* w16, int64_t N, int64_t K, int out_exp, const uint16_t* x16,
                    int64_t T, uint16_t* y16, cudaStream_t s);
// max_n sum_k |W[n, k]| of a bf16 W [N, K] (synchronous: once a matrix).
float bf16_rows_l1_max(const uint16_t* w, int64_t N, int64_t K, uint32_t* scratch, cudaStream_t s);
// rows_to_f16 of silu_mul's product up * silu(gate * gs) from gate and up in fp16 [T, K] as
// gemm_f16_out16 left them: gate = gate16 * 2^(gate_exp - s), up = up16 * 2^(up_exp - s), s =
// shift_for(*max_bits) (their input's shift). silu_mul_f16_rows_fits: K % 4 == 0, 8-byte rows.
bool silu_mul_f16_rows_fits(const uint16_t* gate16, const uint16_t* up16, int64_t K);
void silu_mul_f16_rows(const uint16_t* gate16, const uint16_t* up16, int64_t T, int64_t K, const uint32_t* max_bits,
                       int gate_exp, int up_exp, float gs, uint16_t* x16, float* rows, cudaStream_t s);
// Tests and tuning: silu_mul_f16_rows 8 values a thread's access (16-byte loads and stores) where
// K % 8 == 0 and the rows are 16-byte aligned (the default), else 4. The same arithmetic, the
// same bits. FH1_CUDA_SILU_MUL_WIDE=0 sets the start value to off.
void set_silu_mul_wide(bool on);
// y[t, n] = y[t, n] * rows[t] (+ bias[n] when bias).
void scale_rows(float* y, int64_t T, int64_t N, const float* rows, const float* bias, cudaStream_t s);
// y[T, N] = x[T, K] @ W^T (+ bias) for T <= kGemvRows, W bf16 [N, K], all else float32.
constexpr int64_t kGemvRows = 16;
// From this many rows of x (0: never; default 2, FH1_CUDA_GEMV_MMA) the GEMV multiplies on the
// tensor cores, x as hi + lo bf16 parts (about 16 bits of each value kept), where K % 8 == 0 and
// x's rows are 16-byte aligned; else (and for one row) in float32 on the CUDA cores.
void set_gemv_mma_rows(int rows);
int gemv_mma_rows();
// Weight rows a warp of the tensor-core GEMV takes: 16 (default) or 32 (x's parts made once for
// both halves; FH1_CUDA_GEMV_MMA_TILE).
void set_gemv_mma_tile_rows(int rows);
int gemv_mma_tile_rows();
void gemv_bf16(const uint16_t* W, int64_t N, int64_t K, const float* x, int64_t ldx, int64_t T, const float* bias,
               float* y, cudaStream_t s);
// The decode GEMV in general: up to 4 matrices that read the same x (in_proj and q/k/v; gate/up),
// rows of all parts in one launch, W warps per row (split K; more warps when there are few rows),
// each part's x scaled as it is read (part.xs: the scale op before it taken over) and its rows
// multiplied by a vector (part.v: the mup vector after in_proj), and an optional epilogue that
// takes over the element-wise op the model runs next:
//   kResidual: h += (y_first ? y : a) * sa + (b ? ...) * sb    (o_proj / down_proj, then the residual)
//   kGated:    out = up * silu(gate * gs), parts 0/1 = gate/up (one warp computes both rows)
struct GemvPart {
  const uint16_t* W = nullptr;
  const float* bias = nullptr;
  float* y = nullptr;
  int64_t N = 0;
  float xs = 1.0f;            // y = (x @ W^T) * xs (+ bias): x * xs times W, up to rounding
  const float* v = nullptr;  // then y[t, n] *= v[n] (null: not)
};
constexpr int kGemvParts = 4;
struct GemvJob {
  enum Epi : int { kNone = 0, kResidual = 1, kGated = 2 };
  GemvPart part[kGemvParts];
  int nparts = 1;
  int64_t K = 0;
  const float* x = nullptr;
  int64_t ldx = 0;
  int T = 1;
  // x_out (when not null, contiguous rows of K) receives x * xs_out exactly as the scale op the
  // job took over would have written it (the last one, when several were).
  float xs_out = 1.0f;
  float* x_out = nullptr;
  int epi = kNone;
  float* h = nullptr;            // kResidual: h += first * sa + second * sb
  const float* other = nullptr;  // kResidual: the other addend (null: none)
  bool y_first = true;           // kResidual: y is the first addend (else the second)
  float sa = 0.0f, sb = 0.0f;
  float gs = 1.0f;               // kGated
  float* out = nullptr;          // kGated
};
// Whether gemv_job runs `job` with its parts' scales as given (else every part must share one).
bool gemv_scales_fused(const GemvJob& job);
void gemv_job(const GemvJob& job, cudaStream_t s);
void f16_to_f32(const uint16_t* x, size_t n, float* out, cudaStream_t s);
void add_bias(float* y, int64_t T, int64_t N, const float* bias, cudaStream_t s);
void embed(const int32_t* ids, int64_t T, DType dt, const void* table, int64_t d, float scale, float* out,
           cudaStream_t s);
// absmax (rmsnorm, scale, silu_mul, gate_silu; null: none): atomicMax of the bits of every
// |output| into *absmax (the fp16 GEMM's max, cuda_gemm_f16.cu, taken as the values are written).
// out16 (not null; only where rmsnorm_takes_f16, with absmax): also the fp16 GEMM's input,
// fp16(out * 2^shift) [T, d], with *absmax set to the bits of a bound on |out| whose shift_for is
// that shift (gemm_f16 with x16_ready then computes its alpha from it).
// res (not null; only where rmsnorm_takes_residual, with x == res->h): the residual add before
// the norm, h += a * sa (+ b * sb when b), in the same pass (a prompt's rows: the warp kernel).
// out may be h itself but no other part of h, a or b; it may be null with out16 (then only the
// fp16 copy is written).
// a_rows / b_rows (not null): a's / b's row t still to be multiplied by a_rows[t] / b_rows[t]
// (gemm_f16_rows's output), h += (a * a_rows[t]) * sa, as scale_rows then the add would give.
struct NormResidual {
  float* h = nullptr;
  const float* a = nullptr;
  float sa = 0.0f;
  const float* b = nullptr;
  float sb = 0.0f;
  const float* a_rows = nullptr;
  const float* b_rows = nullptr;
};
bool rmsnorm_takes_f16(const float* x, int64_t T, int64_t d, const float* w, const float* out, const void* out16);
bool rmsnorm_takes_residual(int64_t T, int64_t d, const float* w, const float* out, const NormResidual& res);
void rmsnorm(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out, cudaStream_t s,
             uint32_t* absmax = nullptr, uint16_t* out16 = nullptr, const NormResidual* res = nullptr);
void scale(const float* x, size_t n, float a, float* out, cudaStream_t s, uint32_t* absmax = nullptr);
void mul_columns(float* x, int64_t T, int64_t d, const float* v, cudaStream_t s);
void residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n, cudaStream_t s);
// residual_add2 over T rows of d, then rmsnorm of h into out, in one launch (the same values).
void residual_rmsnorm(float* h, const float* a, float sa, const float* b, float sb, int64_t T, int64_t d,
                      const float* w, float eps, float* out, cudaStream_t s);
void silu_mul(const float* gate, const float* up, float gs, size_t n, float* out, cudaStream_t s,
              uint32_t* absmax = nullptr);
void gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, cudaStream_t s,
               uint32_t* absmax = nullptr);
void gated_rmsnorm(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, int groups, const float* w,
                   float eps, bool norm_before_gate, cudaStream_t s);
void rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* pos, const float* inv_freq,
          cudaStream_t s);
void fill_random_bf16(uint16_t* w, size_t n, float amplitude, uint64_t seed, cudaStream_t s);
void fill_random_f32(float* w, size_t n, float amplitude, uint64_t seed, cudaStream_t s);
// Benchmarks: `rows` rows of `width` random 8-bit KV values (uniform steps, scales amplitude / 127).
void fill_random_kv_q8(void* cache, int64_t rows, int64_t width, float amplitude, uint64_t seed, cudaStream_t s);

// Mamba-2.
void conv1d_silu(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w, const float* bias,
                 float* conv_state, float* out, cudaStream_t s);
// The scan over T tokens from `state` (updated in place). A long prompt's whole chunks run as the
// chunked SSD (batched GEMMs on `blas`, whose stream must be `s`), the rest as the recurrence,
// which may itself run in chunks of tokens in parallel (cuda_ssm.cu says how). Both then need
// `scratch` of ssm_scan_scratch_floats(T, p) floats (0: unused); it is free again when the
// call's work is done. tf32: the SSD's products in TF32 on the tensor cores, else in float32.
size_t ssm_scan_scratch_floats(int64_t T, const SsmParams& p);
void ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
              int64_t T, const SsmParams& p, float* state, float* y, float* scratch, size_t scratch_floats,
              bool tf32, cublasHandle_t blas, cudaStream_t s);
// Tests and tuning: the number of chunks of the recurrence (1: always one pass), 0 (default):
// chosen from the device. FH1_CUDA_SCAN_CHUNKS in the environment sets it at start.
void set_scan_chunks(int chunks);
// Tests and tuning: the SSD takes prompts of at least min_tokens (-1: never; kScanSsdAuto, the
// default: 2 chunks where the recurrence's one pass fills the GPU, else 512; FH1_CUDA_SSD_MIN)
// in windows of window_chunks chunks (0: 8192 tokens; FH1_CUDA_SSD_WINDOW) of chunk_len tokens
// (0: the model's mamba_chunk_size when 32..256, else 128; FH1_CUDA_SSD_CHUNK).
constexpr int64_t kScanSsdAuto = -2;
void set_scan_ssd(int64_t min_tokens, int64_t window_chunks, int chunk_len);
// Tests and tuning: the SSD's fused TF32 kernels where the shapes fit (default on; false: its
// batched cuBLAS GEMMs; FH1_CUDA_SSD_FUSED=0).
void set_scan_ssd_fused(bool on);
// Tests and tuning: the SSD's fused kernels on Hopper's wgmma (cuda_ssd_wgmma.cuh) where the
// device runs sm_90a code (flash_wgmma_available): the outputs for chunks of 128 tokens, the end
// states for N in 128s. 0 off (the mma.sync kernels), 1 (the default) both, 2 and 3 other shapes
// of the outputs kernel, 4 the outputs only. FH1_CUDA_SSD_WGMMA=N sets the start value;
// ssd_wgmma() is 0 where they cannot run.
void set_ssd_wgmma(int variant);
int ssd_wgmma();
// Tests and tuning: on the wgmma path (variant 1, chunks of 128, N a multiple of 128 up to 512)
// the chunks' end and start states go through memory as fp16, each run of 128 entries of a row
// with its own power of two (cuda_ssd_wgmma.cuh); false: float32. FH1_CUDA_SSD_STATES16=0 sets
// the start value to false.
void set_ssd_states16(bool on);
bool ssd_states16();
// Tests and tuning: the chunks a group of the chunk-start recurrence's loads (4 or 8; 0: by the
// grid's size, 8 where it fills at most two blocks an SM). The same sums either way, so the same
// bits. FH1_CUDA_STARTS_GROUP=N sets the start value.
void set_chunk_starts_group(int chunks);
int chunk_starts_group();
// Tests and tuning: the columns of x a block of the outputs kernel on the fp16 states: 64
// (cuda_ssd_wgmma.cuh) or 128 (two heads of 64 or a head of 128 sharing C's and CB's tiles,
// cuda_ssd_wgmma_pairs.cuh; where a group's columns come in 128s, else 64). 0, the default: 128
// where it applies (docs/cuda.md, "Two column blocks a block"). Not the same bits: the 64-column
// kernel rounds C exp(cum_t), the 128-column one C. FH1_CUDA_SSD_OUTPUTS_COLS=N sets the start
// value.
void set_ssd_outputs_cols(int cols);

// Attention. `scratch` must hold attention_scratch_floats(...) floats (same arguments).
// n_past_dev (decode only, when attention_decode_device_len() says so): the length is read from
// device memory at run time and n_past only picks the plan; with `bucket` the plan depends on
// n_past only through the next power of two. tf32: prefill on the tensor cores (else float32).
// The caches hold values of type `kv` (every KV op below likewise). 8-bit caches are read by a
// decode kernel of their own where the bf16 decode on the tensor cores applies (decode_mma_ok);
// elsewhere (prompts, other shapes) their rows are first widened to bf16 in the scratch.
size_t attention_scratch_floats(int64_t T, int64_t n_past, int H, int Hkv, int hd, bool bucket, KvType kv,
                                bool tensor_cores);
// The operands of the prefill's flash attention over bf16 caches: 3 (the default) fp16 (the
// caches copied to fp16 with a power-of-two scale, each query row likewise: up to ~4e-3 of rms), 2 bf16
// with Q and the probabilities split in two parts (~5e-5, up to 2x slower), 1 Q split only,
// 0 plain bf16 (up to 3e-2). FH1_CUDA_FLASH_PREC=N sets the start value.
void set_flash_precision(int prec);
int flash_precision();
// The fp16 prefill attention on Hopper's warpgroup MMA (wgmma; cuda_attention_wgmma.cu) where
// the GPU is compute capability 9.0 and the build has sm_90a code: 0 off (the mma.sync kernel),
// 1..flash_wgmma_variants() its block shapes (the default 12: 128-key tiles by the copy engine,
// 3 warpgroups of 64 queries; the others for tuning, listed there). FH1_CUDA_FLASH_WGMMA=N sets
// the start value.
void set_flash_wgmma(int variant);
int flash_wgmma();
int flash_wgmma_variants();
// Tests: the attention's exponential on the FMA pipe (ex2_fma, cuda_attention_common.cuh) of n
// values at x (device memory) into y, synchronously.
void exp2_fma_values(const float* x, float* y, int64_t n);
bool flash_wgmma_available();
bool attention_decode_device_len(int64_t T, int H, int hd, const void* k, const void* v, int Hkv, KvType kv);
void attention(const float* q, int64_t ldq, int64_t T, const void* k, const void* v, int64_t n_past,
               const int64_t* n_past_dev, bool bucket, int H, int Hkv, int hd, float scale, bool tf32, KvType kv,
               float* out, float* scratch, cudaStream_t s);

// Decode rows: query row i of sequence i over its caches kcs[i] / vcs[i] (device arrays of
// device pointers) with n_pasts[i] (device array) earlier tokens; max_past (host) picks the plan.
// attention_rows_ok: whether attention_rows takes this shape (else the caller runs attention() a
// sequence at a time).
bool attention_rows_ok(int H, int hd, int Hkv, KvType kv);
size_t attention_rows_scratch_floats(int64_t n, int64_t max_past, int H, int Hkv, int hd, bool bucket);
void attention_rows(const float* q, int64_t ldq, int64_t n, const void* const* kcs, const void* const* vcs,
                    const int64_t* n_pasts, int64_t max_past, bool bucket, int H, int Hkv, int hd, float scale,
                    KvType kv, float* out, float* scratch, cudaStream_t s);
// Row i of a decode step into caches[i] at row rows[i] (device arrays).
void kv_write_rows(void* const* caches, const int64_t* rows, const float* src, int64_t n, int64_t width,
                   KvType kv, cudaStream_t s);
// One token per sequence: conv (state conv_states[i]) and scan (state ssm_states[i]) of row i.
void conv1d_silu_rows(const float* in, int64_t ld_in, int64_t n, int64_t C, int K, const float* w, const float* bias,
                      float* const* conv_states, float* out, cudaStream_t s);
void ssm_scan_rows(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
                   int64_t n, const SsmParams& p, float* const* states, float* y, cudaStream_t s);

// Fused forms for recorded decode steps (cuda_kernels.cpp puts them together).
struct RopePart {
  float* x = nullptr;
  int64_t ld = 0;
  int heads = 0;
  bool scaled = false;  // x *= pre first (an in-place scale op folded in)
  float pre = 1.0f;
};
struct RopeParts {
  RopePart part[2];
  int nparts = 1;
};
void rope_parts(const RopeParts& rp, int64_t T, int hd, const int64_t* pos, const float* inv_freq, cudaStream_t s);
struct KvRowsPart {
  void* const* caches = nullptr;
  const int64_t* rows = nullptr;
  const float* src = nullptr;
  int from_rope = -1;  // rope_kv_parts: src is this rope part's x (its rows rotated), else copied
};
struct KvRowsParts {
  KvRowsPart part[2];
};
void kv_write_rows_parts(const KvRowsParts& kp, int nparts, int64_t n, int64_t width, KvType kv, cudaStream_t s);
// Whether rope_kv_parts can store rotated rows into 8-bit caches (each warp's 32 values one block).
inline bool rope_kv_q8_ok(int hd, int64_t width) { return hd % 64 == 0 && width % 32 == 0; }
// rope_parts, then kv_write_rows_parts of T rows, in one launch. A KV part with from_rope >= 0
// stores that rope part's rotated values (its rows are `width` = heads * hd, contiguous).
void rope_kv_parts(const RopeParts& rp, int64_t T, int hd, const int64_t* pos, const float* inv_freq,
                   const KvRowsParts& kp, int kv_nparts, int64_t width, KvType kv, cudaStream_t s);
// ssm_scan_rows with the gate of the next op folded in when z is not null: y *= silu(z[i, row]).
void ssm_scan_rows_gated(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw,
                         int64_t ld_dt, int64_t n, const SsmParams& p, float* const* states, const float* z,
                         int64_t ldz, float* y, cudaStream_t s);

// The k best of each of `rows` rows of n floats: ids and values (rows x k, device memory), best
// first, the lower index first on ties; 1 <= k <= min(n, kTopKMax). k = 1 needs scratch: at least
// top_k_partials(rows, n, k) partials, and one counter per row, zero before the first call (each
// call leaves them at zero).
constexpr int kTopKMax = 256;
struct TopKScratch {
  unsigned long long* partials = nullptr;
  unsigned* counters = nullptr;
};
int64_t top_k_partials(int64_t rows, int64_t n, int k);
void top_k_rows(const float* x, int64_t rows, int64_t n, int k, int32_t* ids, float* vals, TopKScratch scratch,
                cudaStream_t s);
// Kernels::lower_entries with every array in device memory.
void lower_entries(float* x, int64_t count, const int64_t* index, const float* amount, float* original,
                   cudaStream_t s);
// Kernels::softmax_rows with every array in device memory.
void softmax_rows(const float* x, int64_t rows, int64_t n, const double* inv_t, const double* u, double* sums,
                  int32_t* drawn, cudaStream_t s);

// Appends rows to a KV cache: cache[row + i, :] = src[i, :], row read from row_dev when not null.
void kv_write(void* cache, int64_t row, const int64_t* row_dev, const float* src, int64_t rows, int64_t width,
              KvType kv, cudaStream_t s);

}  // namespace fh1::cuda
