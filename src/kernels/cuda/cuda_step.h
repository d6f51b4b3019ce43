// A decode step of the CUDA backend as a CUDA graph (internal to src/kernels/cuda): between
// begin() and end() every op is recorded (a closure that launches it, and a signature: the op and
// every argument, except the values a decode step changes, which go to a small device array
// uploaded once per step: token ids, positions, the KV row written and the attention length).
// At end() the signature is looked up among the graphs captured before (a few, least recently
// used dropped); a match is replayed with one cudaGraphLaunch, else the closures are captured
// into a new graph. A step whose recording had to free memory that earlier closures use (a
// scratch buffer grew) runs its closures directly.
//
// While recording, one op is held back (pending) so that the next may join it: GEMVs that read
// the same x become one launch (also across a second scale of that x: the in_proj and q/k/v),
// the element-wise op after a GEMV becomes its epilogue (mup columns, residual, gated SiLU), the
// scale before a GEMV its prologue, an in-place scale folds into the rope after it, the two
// ropes and the two KV writes of a layer become one launch (the rotated keys stored as they are
// computed), the gate after the scan joins the scan, and a residual add that no GEMV took joins
// the RMSNorm after it. Every fusion checks that it computes what the ops one by one compute.
//
// Branches (kernels.h: branch_begin/end/join): the branch's ops are captured on a second stream
// that forks from the step's stream and joins it again, so the graph runs them beside the ops
// recorded between branch_end() and branch_join(). lane() says which stream an op being recorded
// will run on, so that the backend gives each its own scratch memory. In a one-row step the
// branch's stream has the greatest priority and the GEMVs beside the branch launch without PDL
// (their blocks would wait on the SMs and keep the branch's kernels out; docs/cuda.md).
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/kernels.h"

namespace fh1::cuda {

// The closures of a recorded step, placed in blocks of memory kept from step to step (a
// std::function each allocated and freed ~600 closures on the host in every 7B step).
class ClosureTape {
 public:
  ClosureTape() = default;
  ClosureTape(const ClosureTape&) = delete;
  ClosureTape& operator=(const ClosureTape&) = delete;
  ~ClosureTape() { clear(); }

  template <class F>
  void push(F&& f) {
    using C = std::decay_t<F>;
    static_assert(sizeof(C) <= kBlock, "a closure larger than a tape block");
    static_assert(alignof(C) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__, "a block's alignment is new[]'s");
    void* p = place(sizeof(C), alignof(C));
    new (p) C(std::forward<F>(f));
    items_.push_back(Item{p, [](void* q) { (*static_cast<C*>(q))(); }, [](void* q) { static_cast<C*>(q)->~C(); }});
  }
  void run() {
    for (const Item& it : items_) it.call(it.p);
  }
  // Destroys the closures; the blocks stay for the next step.
  void clear() {
    for (const Item& it : items_) it.destroy(it.p);
    items_.clear();
    block_ = 0;
    used_ = 0;
  }
  void swap(ClosureTape& o) noexcept {
    std::swap(blocks_, o.blocks_);
    std::swap(items_, o.items_);
    std::swap(block_, o.block_);
    std::swap(used_, o.used_);
  }

 private:
  static constexpr size_t kBlock = 64 << 10;
  struct Item {
    void* p;
    void (*call)(void*);
    void (*destroy)(void*);
  };
  void* place(size_t bytes, size_t align) {
    for (;;) {
      if (block_ == blocks_.size()) blocks_.push_back(std::make_unique<char[]>(kBlock));
      const size_t at = (used_ + align - 1) / align * align;
      if (at + bytes <= kBlock) {
        used_ = at + bytes;
        return blocks_[block_].get() + at;
      }
      ++block_;
      used_ = 0;
    }
  }
  std::vector<std::unique_ptr<char[]>> blocks_;
  std::vector<Item> items_;
  size_t block_ = 0, used_ = 0;  // the block being filled and its bytes used
};

class DecodeStep {
 public:
  // on_lane(lane, stream): every op after it runs on that stream (lane 0: the step's own, 1: the
  // branch's); called while the recorded ops run (and with 0 at the end of a step).
  DecodeStep(cudaStream_t stream, std::function<void(int, cudaStream_t)> on_lane)
      : stream_(stream), cur_(stream), on_lane_(std::move(on_lane)) {}
  ~DecodeStep();
  DecodeStep(const DecodeStep&) = delete;
  DecodeStep& operator=(const DecodeStep&) = delete;

  bool recording() const { return recording_; }
  bool fusing() const { return recording_ && fuse_; }
  void set_graphs(bool on) { graphs_on_ = on; }
  bool graphs() const { return graphs_on_; }
  void set_fuse(bool on) { fuse_ = on; }
  void set_branches(bool on) { branches_ = on; }
  bool branches() const { return branches_; }
  // A one-row step's branch runs on a stream of the greatest priority (see branch_begin()).
  void set_branch_priority(bool on) { branch_priority_ = on; }
  // Which GEMVs of a branched step launch without PDL: 1: beside the branch, one-row steps; 2: in
  // the branch, one-row steps; 4 and 8: the same with more rows.
  void set_plain_gemvs(int mask) { plain_gemvs_ = mask; }
  // The stream (0: the step's, 1: the branch's) that the op recorded now will run on.
  int lane() const { return recording_ && branch_ == Branch::Side ? 1 : 0; }
  // The stream the closures being run launch on.
  cudaStream_t stream() const { return cur_; }
  size_t graphs_captured() const { return graphs_captured_; }

  // Starts recording (when graphs are on); a recording in progress must have ended. A step held
  // and not launched is dropped.
  void begin();
  // Ends a recording: replays the step's graph, captures a new one, or runs the closures; or,
  // after hold_next(), holds the step (its graph looked up; a new one is captured at launch) until
  // launch_held().
  void end();
  // The step recorded next is held at end() instead of launched: the host records a decode step
  // while the GPU still runs the one before, and launches it once its tokens are known.
  // Returns the held step's ticket (0: graphs are off, nothing will be held).
  uint64_t hold_next() {
    hold_ = graphs_on_;
    return hold_ ? ++ticket_ : 0;
  }
  size_t held_launched() const { return held_launched_; }
  // Writes the held step's n token ids (what its embed was given are placeholders) and launches
  // it; false when the step of that ticket is not held (dropped since, or another one held).
  bool launch_held(uint64_t ticket, const int32_t* ids, int64_t n);
  // Forgets a held step (its closures and retired memory), and a hold_next() not yet used.
  void drop_held();
  // drop_held() if `ticket` is the last hold_next()'s.
  void drop_ticket(uint64_t ticket) {
    if (ticket != 0 && ticket == ticket_) drop_held();
  }

  // Keeps f with its signature: the op's tag and its arguments. Pending fusion is not flushed.
  template <class F, class... A>
  void record(const char* name, F&& f, A... args) {
    sig_.push_back(word(name));
    (sig_.push_back(word(args)), ...);
    tape_.push(std::forward<F>(f));
  }
  // Records any pending op first, then this one.
  template <class F, class... A>
  void op(const char* name, F&& f, A... args) {
    flush_pending();
    record(name, std::forward<F>(f), args...);
  }

  // Copies a host array into the step's device array; returns its byte offset there. kind >= 0:
  // reuse the last array of that kind when its content is the same (rope's positions, twice a layer).
  size_t put(const void* src, size_t bytes, int kind);
  // The device array's base, valid when a recorded closure runs (it moves when it grows).
  const char* device_arrays() const { return dyn_dev_; }
  // A buffer that closures recorded earlier in this step may still use: freed after the step
  // (not recording: now, after the stream's work).
  void retire(void* p);

  // ---- fusion: each returns true when it took the op (joined or pending) ----
  bool scale(const float* x, size_t n, float s, float* out);
  bool mul_columns(float* x, int64_t T, int64_t d, const float* v);
  bool residual(float* h, const float* a, float sa, const float* b, float sb, size_t n);
  bool silu_mul(const float* gate, const float* up, float gs, size_t n, float* out);
  bool gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d);
  void gemv(const float* x, int64_t ldx, int64_t T, const WeightView& w, const float* bias, float* y);
  void rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* positions, const float* inv_freq);
  void kv_rows(float* const* caches, const int64_t* n_past, const float* src, int64_t n, int64_t width, KvType kv);
  void scan_rows(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt, int64_t ld_dt,
                 int64_t n, const SsmParams& p, float* const* ssm_states, float* y);
  // True when it took the norm (joined with a pending residual add of its input).
  bool rmsnorm(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out);
  void flush_pending(bool keep_scale = false);

  void branch_begin();
  void branch_end();
  void branch_join();

  template <class T>
  static uint64_t word(T v) {
    if constexpr (std::is_pointer_v<T>) {
      return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(v));
    } else if constexpr (std::is_same_v<T, float>) {
      uint32_t u;
      std::memcpy(&u, &v, 4);
      return u;
    } else if constexpr (std::is_same_v<T, double>) {
      uint64_t u;
      std::memcpy(&u, &v, 8);
      return u;
    } else {
      return static_cast<uint64_t>(v);
    }
  }

 private:
  enum class PK { None, Gemv, Rope, Kv, Scan, Scale, Residual };
  enum class Branch { None, Side, Beside };  // recording the branch / the ops beside it
  struct PendingCopyScale {  // out = x * s, out not x
    const float* x = nullptr;
    float* out = nullptr;
    size_t n = 0;
    float s = 1.0f;
  };
  struct PendingScale {  // x *= s, in place
    bool on = false;
    float* x = nullptr;
    size_t n = 0;
    float s = 1.0f;
  };
  struct PendingKv {
    size_t off[2][2] = {{0, 0}, {0, 0}};
    const float* src[2] = {nullptr, nullptr};
    int from_rope[2] = {-1, -1};
    int nparts = 0;
    int64_t n = 0, width = 0;
    KvType kv = KvType::F32;
    void add(size_t caches, size_t rows, const float* from, int64_t n_rows, int64_t w, KvType type, int rope = -1) {
      off[nparts][0] = caches;
      off[nparts][1] = rows;
      src[nparts] = from;
      from_rope[nparts++] = rope;
      n = n_rows;
      width = w;
      kv = type;
    }
  };
  struct PendingRope {
    RopeParts rp;
    int64_t T = 0;
    int hd = 0;
    size_t pos = 0, freq = 0;
    PendingKv kv;  // the KV writes after it, joined
  };
  struct PendingScan {
    const float *x, *B, *C;
    int64_t ld_xbc;
    const float* dt;
    int64_t ld_dt, n;
    SsmParams p;
    size_t off;
    float* y;
    const float* z;
    int64_t ldz;
  };
  struct PendingResidual {  // h += a * sa (+ b * sb)
    float* h;
    const float *a, *b;
    float sa, sb;
    size_t n;
  };
  struct Graph {
    std::vector<uint64_t> sig;
    cudaGraphExec_t exec = nullptr;
    uint64_t used = 0;
  };
  static constexpr size_t kMaxGraphs = 48;  // a shape takes two when recorded ahead (logits)

  void emit_scale();
  void sign();
  cudaGraphExec_t lookup();
  cudaGraphExec_t lookup_or_capture();
  char* dyn_dev_grown();
  void launch_recorded(cudaGraphExec_t exec);
  void time_step_begin();
  void time_launch_begin();
  void time_step_launched();
  void free_retired();
  void use_lane(int lane);
  bool rope_takes_kv(const float* src, int64_t n, int64_t width, KvType kv) const;
  KvRowsParts kv_parts(const PendingKv& kv) const;  // while the recorded ops run
  bool residual_into_gemv(float* h, const float* a, float sa, const float* b, float sb, size_t n);
  void close_branches();

  cudaStream_t stream_;
  cudaStream_t cur_;
  cudaStream_t side_ = nullptr;        // the branch's stream
  cudaStream_t side_first_ = nullptr;  // the same at the greatest priority (one-row steps)
  cudaStream_t branch_stream_ = nullptr;  // the branch's, while the recorded ops run
  cudaEvent_t fork_ = nullptr, join_ = nullptr;
  std::function<void(int, cudaStream_t)> on_lane_;
  Branch branch_ = Branch::None;
  bool graphs_on_ = true;
  bool fuse_ = true;
  bool branches_ = true;
  bool branch_priority_ = true;
  int plain_gemvs_ = 1;
  int64_t step_rows_ = 0;  // the rows of the step's first GEMV (0: none recorded yet)
  bool recording_ = false;
  bool rec_dirty_ = false;
  bool hold_ = false;                     // hold the step recorded now at end()
  bool held_ = false;                     // a recorded step waits for launch_held()
  cudaGraphExec_t held_exec_ = nullptr;   // its graph (null: captured at launch, or run directly)
  bool signed_ = false;                   // the step array's address ends the signature
  size_t held_launched_ = 0;
  uint64_t ticket_ = 0;  // the last hold_next()'s
  size_t tokens_at_ = SIZE_MAX, tokens_bytes_ = 0;  // the token ids in the step array
  std::vector<uint64_t> sig_;
  ClosureTape tape_;  // the step being recorded (or held)
  std::vector<uint64_t> spare_sig_;  // a signature's memory, back from a replayed step
  std::vector<char> dyn_host_;
  std::array<size_t, 3> dyn_last_{SIZE_MAX, SIZE_MAX, SIZE_MAX};
  std::array<size_t, 3> dyn_bytes_{0, 0, 0};
  char* dyn_dev_ = nullptr;
  size_t dyn_cap_ = 0;
  std::vector<void*> retired_;
  std::vector<Graph> graphs_;
  uint64_t graph_clock_ = 0;
  size_t graphs_captured_ = 0;
  PK pk_ = PK::None;
  PendingCopyScale pxs_;
  GemvJob pg_;
  PendingRope pr_;
  PendingKv pkv_;
  PendingScan ps_{};
  PendingScale psc_;
  PendingResidual pres_{};
  // FH1_CUDA_STEP_TIMES=1: per recorded step the host's recording time, per graph launch the
  // host's upload and launch time, the time from one launch to the next, and the GPU's time
  // (events around the launch, read at the next launch); medians printed when the step is
  // destroyed.
  struct StepTimes {
    bool on = false;
    std::vector<double> record_us, launch_us, period_us, gpu_us;
    std::chrono::steady_clock::time_point begin, launch_begin;
    cudaEvent_t ev[2] = {nullptr, nullptr};
    bool ev_pending = false;  // the last launch was a graph's: its events count
  } times_;
};

}  // namespace fh1::cuda
