// Decode steps as CUDA graphs, and the fusion of a recorded step's ops (cuda_step.h).
#include "kernels/cuda/cuda_step.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "util/error.h"

namespace fh1::cuda {
namespace {

double us_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

bool overlap(const void* a, size_t na, const void* b, size_t nb) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + nb * sizeof(float) && pb < pa + na * sizeof(float);
}

size_t gemv_x_floats(const GemvJob& j) { return static_cast<size_t>((j.T - 1) * j.ldx + j.K); }

// Whether n floats at p overlap the job's input x or the scale's output it writes.
bool job_reads(const GemvJob& j, const void* p, size_t n) {
  return overlap(p, n, j.x, gemv_x_floats(j)) || (j.x_out && overlap(p, n, j.x_out, static_cast<size_t>(j.T * j.K)));
}

// ... or its rows of y.
bool job_touches(const GemvJob& j, const void* p, size_t n) {
  if (job_reads(j, p, n)) return true;
  for (int i = 0; i < j.nparts; ++i)
    if (overlap(p, n, j.part[i].y, static_cast<size_t>(j.T * j.part[i].N))) return true;
  return false;
}

}  // namespace

DecodeStep::~DecodeStep() {
  for (cudaStream_t s : {side_, side_first_}) {
    if (!s) continue;
    cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
  }
  if (fork_) cudaEventDestroy(fork_);
  if (join_) cudaEventDestroy(join_);
  for (auto& g : graphs_) cudaGraphExecDestroy(g.exec);
  for (void* p : retired_) cudaFree(p);
  cudaFree(dyn_dev_);
  if (times_.on && !times_.launch_us.empty()) {
    std::fprintf(stderr,
                 "decode steps (medians): host recording %.1f us (%zu steps), upload + launch %.1f us (%zu graph "
                 "launches), launch to launch %.1f us, GPU from the upload to the graph's end %.1f us\n",
                 median(times_.record_us), times_.record_us.size(), median(times_.launch_us), times_.launch_us.size(),
                 median(times_.period_us), median(times_.gpu_us));
  }
  for (cudaEvent_t e : times_.ev)
    if (e) cudaEventDestroy(e);
}

void DecodeStep::time_step_begin() {
  static const bool on = [] {
    const char* e = std::getenv("FH1_CUDA_STEP_TIMES");
    return e && std::string(e) == "1";
  }();
  if (!on) return;
  if (!times_.on) {
    check(cudaEventCreate(&times_.ev[0]), "step events");
    check(cudaEventCreate(&times_.ev[1]), "step events");
    times_.on = true;
  }
  times_.begin = std::chrono::steady_clock::now();
}

// Before a launch: the last launched step's GPU time (its events are done by now or soon: the
// host has read its results), then this one's start.
void DecodeStep::time_launch_begin() {
  if (!times_.on) return;
  const auto now = std::chrono::steady_clock::now();
  if (times_.ev_pending) {
    times_.period_us.push_back(std::chrono::duration<double, std::micro>(now - times_.launch_begin).count());
    float ms = 0.0f;
    check(cudaEventSynchronize(times_.ev[1]), "step events");
    check(cudaEventElapsedTime(&ms, times_.ev[0], times_.ev[1]), "step events");
    times_.gpu_us.push_back(1e3 * ms);
    times_.ev_pending = false;
  }
  times_.launch_begin = now;
  check(cudaEventRecord(times_.ev[0], stream_), "step events");
}

void DecodeStep::time_step_launched() {
  if (!times_.on) return;
  times_.launch_us.push_back(us_since(times_.launch_begin));
  check(cudaEventRecord(times_.ev[1], stream_), "step events");
  times_.ev_pending = true;
}

void DecodeStep::begin() {
  if (!graphs_on_) return;
  const bool hold = hold_;
  drop_held();  // a new step replaces one held and not launched
  hold_ = hold;
  time_step_begin();
  recording_ = true;
  rec_dirty_ = false;
  branch_ = Branch::None;
  step_rows_ = 0;
  pk_ = PK::None;
  psc_.on = false;
  dyn_host_.clear();
  dyn_last_.fill(SIZE_MAX);
  tokens_at_ = SIZE_MAX;
  tokens_bytes_ = 0;
  signed_ = false;
}

void DecodeStep::end() {
  if (!recording_) return;
  flush_pending();
  close_branches();
  recording_ = false;
  if (times_.on) times_.record_us.push_back(us_since(times_.begin));
  if (!hold_) {
    launch_recorded(lookup_or_capture());
    return;
  }
  hold_ = false;
  held_ = true;
  held_exec_ = lookup();  // a miss is captured at launch: a held step may never run
}

bool DecodeStep::launch_held(uint64_t ticket, const int32_t* ids, int64_t n) {
  if (!held_ || ticket != ticket_) return false;
  const size_t bytes = static_cast<size_t>(n) * sizeof(int32_t);
  if (tokens_at_ == SIZE_MAX || bytes != tokens_bytes_) {
    drop_held();
    throw Error("decode step: a held step recorded " + std::to_string(tokens_bytes_ / 4) + " tokens, given " +
                std::to_string(n));
  }
  std::memcpy(dyn_host_.data() + tokens_at_, ids, bytes);
  held_ = false;
  ++held_launched_;
  launch_recorded(held_exec_ ? held_exec_ : lookup_or_capture());
  return true;
}

void DecodeStep::drop_held() {
  hold_ = false;
  if (!held_) return;
  held_ = false;
  held_exec_ = nullptr;
  signed_ = false;
  tape_.clear();
  sig_.clear();
  dyn_host_.clear();
  rec_dirty_ = false;
  free_retired();
}

// Ends the recorded step's signature with the step array's address (every graph reads it).
void DecodeStep::sign() {
  if (signed_) return;
  sig_.push_back(word(dyn_dev_grown()));
  signed_ = true;
}

// A graph captured before with the recorded step's signature, or null (none; or the step must
// run directly: its recording retired memory that earlier closures use).
cudaGraphExec_t DecodeStep::lookup() {
  sign();
  if (rec_dirty_) return nullptr;
  for (auto& g : graphs_) {
    if (g.sig == sig_) {
      g.used = ++graph_clock_;
      spare_sig_.swap(sig_);  // its memory serves a later step
      sig_.clear();
      return g.exec;
    }
  }
  return nullptr;
}

// lookup(), else the recorded closures captured into a new graph (null: the step runs directly).
cudaGraphExec_t DecodeStep::lookup_or_capture() {
  if (cudaGraphExec_t e = lookup()) return e;
  if (rec_dirty_) return nullptr;
  cudaGraph_t graph = nullptr;
  check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  try {
    tape_.run();
  } catch (...) {
    use_lane(0);
    cudaStreamEndCapture(stream_, &graph);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw;
  }
  check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  // Node priorities: the kernels captured on the branch's high-priority stream keep it.
  const cudaError_t e = cudaGraphInstantiate(&exec, graph, cudaGraphInstantiateFlagUseNodePriority);
  cudaGraphDestroy(graph);
  check(e, "cudaGraphInstantiate");
  if (graphs_.size() >= kMaxGraphs) {
    auto lru = std::min_element(graphs_.begin(), graphs_.end(),
                                [](const Graph& a, const Graph& b) { return a.used < b.used; });
    cudaGraphExecDestroy(lru->exec);
    graphs_.erase(lru);
  }
  std::vector<uint64_t> sig;
  sig.swap(sig_);
  sig_.swap(spare_sig_);
  sig_.clear();
  graphs_.push_back(Graph{std::move(sig), exec, ++graph_clock_});
  ++graphs_captured_;
  return exec;
}

// The device array of per-step values, grown to hold this step's (its address is in the
// signature: every graph reads it).
char* DecodeStep::dyn_dev_grown() {
  if (dyn_host_.size() > dyn_cap_) {
    check(cudaStreamSynchronize(stream_), "step array");
    cudaFree(dyn_dev_);
    dyn_dev_ = nullptr;
    dyn_cap_ = std::max<size_t>(dyn_host_.size() * 2, 64 << 10);
    check(cudaMalloc(&dyn_dev_, dyn_cap_), "step array");
  }
  return dyn_dev_;
}

// Uploads the step's values and launches its graph (exec null: runs its closures directly).
void DecodeStep::launch_recorded(cudaGraphExec_t exec) {
  struct Cleared {  // the tape is empty for the next step whatever happens
    DecodeStep& d;
    ~Cleared() {
      d.tape_.clear();
      d.sig_.clear();
      d.signed_ = false;
      d.held_exec_ = nullptr;
    }
  } cleared{*this};
  time_launch_begin();
  if (!dyn_host_.empty())  // pageable: staged before the call returns
    check(cudaMemcpyAsync(dyn_dev_grown(), dyn_host_.data(), dyn_host_.size(), cudaMemcpyHostToDevice, stream_),
          "step array");
  if (exec == nullptr) {
    try {
      tape_.run();
    } catch (...) {
      use_lane(0);
      throw;
    }
    free_retired();
    return;
  }
  check(cudaGraphLaunch(exec, stream_), "cudaGraphLaunch");
  time_step_launched();
}

size_t DecodeStep::put(const void* src, size_t bytes, int kind) {
  if (kind >= 0 && dyn_last_[static_cast<size_t>(kind)] != SIZE_MAX) {
    const size_t at = dyn_last_[static_cast<size_t>(kind)];
    if (dyn_bytes_[static_cast<size_t>(kind)] == bytes && std::memcmp(dyn_host_.data() + at, src, bytes) == 0) return at;
  }
  const size_t at = (dyn_host_.size() + 15) / 16 * 16;
  dyn_host_.resize(at + std::max<size_t>(bytes, 1));
  std::memcpy(dyn_host_.data() + at, src, bytes);
  if (kind >= 0) {
    dyn_last_[static_cast<size_t>(kind)] = at;
    dyn_bytes_[static_cast<size_t>(kind)] = bytes;
  }
  if (kind == 0) {  // the token ids: a held step's are written at launch
    tokens_at_ = at;
    tokens_bytes_ = bytes;
  }
  return at;
}

void DecodeStep::retire(void* p) {
  if (p == nullptr) return;
  if (recording_) {
    retired_.push_back(p);
    rec_dirty_ = true;
  } else {
    drop_held();  // its closures may use p
    check(cudaStreamSynchronize(stream_), "scratch");
    cudaFree(p);
  }
}

void DecodeStep::free_retired() {
  if (retired_.empty()) return;
  check(cudaStreamSynchronize(stream_), "scratch");
  for (void* p : retired_) cudaFree(p);
  retired_.clear();
}

// ---- branches ----

void DecodeStep::use_lane(int lane) {
  cur_ = lane ? branch_stream_ : stream_;
  if (on_lane_) on_lane_(lane, cur_);
}

void DecodeStep::branch_begin() {
  if (!recording_ || !branches_) return;
  if (branch_ != Branch::None) throw Error("decode step: branch_begin inside a branch");
  flush_pending();
  if (!side_) {
    check(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking), "cudaStreamCreate (branch)");
    int least = 0, greatest = 0;
    check(cudaDeviceGetStreamPriorityRange(&least, &greatest), "stream priorities");
    check(cudaStreamCreateWithPriority(&side_first_, cudaStreamNonBlocking, greatest), "cudaStreamCreate (branch)");
    check(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming), "cudaEventCreate (branch)");
    check(cudaEventCreateWithFlags(&join_, cudaEventDisableTiming), "cudaEventCreate (branch)");
  }
  // In a one-row step the branch (the attention's chain) and the ops beside it (the Mamba-2
  // chain) are latency-bound chains of small kernels of about equal length: the branch's
  // kernels first, whenever both have blocks waiting, shortened 7B steps (docs/cuda.md). With
  // more rows the chain beside is the longer one and the priority lengthened the step.
  const bool first = branch_priority_ && step_rows_ == 1;
  cudaStream_t side = first ? side_first_ : side_;
  branch_ = Branch::Side;
  record(
      "branch begin",
      [this, side] {
        branch_stream_ = side;
        check(cudaEventRecord(fork_, stream_), "branch fork");
        check(cudaStreamWaitEvent(side, fork_, 0), "branch fork");
        use_lane(1);
      },
      first);
}

void DecodeStep::branch_end() {
  if (!recording_ || branch_ != Branch::Side) return;
  flush_pending();
  branch_ = Branch::Beside;
  record("branch end", [this] {
    check(cudaEventRecord(join_, branch_stream_), "branch end");
    use_lane(0);
  });
}

void DecodeStep::branch_join() {
  if (!recording_ || branch_ == Branch::None) return;
  if (branch_ == Branch::Side) branch_end();
  flush_pending();
  branch_ = Branch::None;
  record("branch join", [this] { check(cudaStreamWaitEvent(stream_, join_, 0), "branch join"); });
}

// A step ends joined: a capture must, and the stream after it must have waited for the branch.
void DecodeStep::close_branches() {
  if (branch_ != Branch::None) branch_join();
}

// ---- fusion ----

bool DecodeStep::scale(const float* x, size_t n, float s, float* out) {
  if (!fusing() || n == 0) return false;
  if (x == out) {  // in place: maybe folded into the rope after it
    flush_pending();
    psc_ = PendingScale{true, out, n, s};
    return true;
  }
  // The same x scaled again into the same output, right after a GEMV job that took over the
  // first scale: the job writes this scale's output instead, and the GEMVs that come next (and
  // read it) join the job with their own scale (the attention's q/k/v after the in_proj).
  if (pk_ == PK::Gemv && pg_.epi == GemvJob::kNone && pg_.x_out == out && pg_.x == x &&
      n == static_cast<size_t>(pg_.T * pg_.K) && pg_.ldx == pg_.K && gemv_scales_fused(pg_)) {
    pg_.xs_out = s;
    return true;
  }
  if (!overlap(x, n, out, n)) {  // maybe taken over by the GEMV after it
    flush_pending();
    pk_ = PK::Scale;
    pxs_ = PendingCopyScale{x, out, n, s};
    return true;
  }
  return false;
}

bool DecodeStep::mul_columns(float* x, int64_t T, int64_t d, const float* v) {
  if (!fusing() || pk_ != PK::Gemv || pg_.epi != GemvJob::kNone) return false;
  GemvPart& last = pg_.part[pg_.nparts - 1];
  if (last.y != x || pg_.T != T || last.N != d || last.v != nullptr) return false;
  last.v = v;  // the job stays open: the attention's projections may join it
  return true;
}

bool DecodeStep::residual(float* h, const float* a, float sa, const float* b, float sb, size_t n) {
  if (!fusing() || n == 0) return false;
  if (!residual_into_gemv(h, a, sa, b, sb, n)) {  // held back: the RMSNorm after it may take it
    if (overlap(h, n, a, n) || (b && overlap(h, n, b, n))) return false;
    flush_pending();
    pk_ = PK::Residual;
    pres_ = PendingResidual{h, a, b, sa, sb, n};
  }
  return true;
}

bool DecodeStep::residual_into_gemv(float* h, const float* a, float sa, const float* b, float sb, size_t n) {
  if (pk_ != PK::Gemv || pg_.nparts != 1 || pg_.epi != GemvJob::kNone || pg_.part[0].v) return false;
  const float* y = pg_.part[0].y;
  if (n != static_cast<size_t>(pg_.T * pg_.part[0].N) || a == b) return false;
  if (a != y && b != y) return false;
  const float* other = a == y ? b : a;
  if (job_touches(pg_, h, n) || (other && overlap(h, n, other, n) && h != other)) return false;
  if (other == h) return false;
  pg_.epi = GemvJob::kResidual;
  pg_.h = h;
  pg_.other = other;
  pg_.y_first = a == y;
  pg_.sa = sa;
  pg_.sb = sb;
  flush_pending();
  return true;
}

bool DecodeStep::rmsnorm(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out) {
  if (!fusing() || pk_ != PK::Residual) return false;
  const PendingResidual r = pres_;
  const size_t n = static_cast<size_t>(T * d);
  // Every thread reads a, b and h of its own elements before writing out: out must be apart.
  if (r.h != x || r.n != n || overlap(out, n, r.h, n) || overlap(out, n, r.a, n) || (r.b && overlap(out, n, r.b, n)))
    return false;
  pk_ = PK::None;
  record("residual rmsnorm", [=, this] { residual_rmsnorm(r.h, r.a, r.sa, r.b, r.sb, T, d, w, eps, out, cur_); }, r.h,
         r.a, r.sa, r.b, r.sb, T, d, w, eps, out);
  return true;
}

bool DecodeStep::silu_mul(const float* gate, const float* up, float gs, size_t n, float* out) {
  if (!fusing() || pk_ != PK::Gemv || pg_.nparts != 2 || pg_.epi != GemvJob::kNone) return false;
  if (pg_.part[0].v || pg_.part[1].v || pg_.part[0].xs != pg_.part[1].xs || pg_.part[0].y != gate ||
      pg_.part[1].y != up || pg_.part[0].N != pg_.part[1].N || n != static_cast<size_t>(pg_.T * pg_.part[0].N))
    return false;
  if (out != gate && overlap(out, n, pg_.x, gemv_x_floats(pg_))) return false;
  pg_.epi = GemvJob::kGated;
  pg_.gs = gs;
  pg_.out = out;
  flush_pending();
  return true;
}

bool DecodeStep::gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d) {
  if (!fusing() || pk_ != PK::Scan || ps_.y != y || ps_.n != T ||
      d != static_cast<int64_t>(ps_.p.heads) * ps_.p.head_dim)
    return false;
  ps_.z = z;
  ps_.ldz = ldz;
  flush_pending();
  return true;
}

void DecodeStep::gemv(const float* x, int64_t ldx, int64_t T, const WeightView& w, const float* bias, float* y) {
  if (step_rows_ == 0) step_rows_ = T;
  const size_t ny = static_cast<size_t>(T * w.rows);
  // The scale just before, into exactly this x: the GEMV reads the scale's input instead and
  // writes its output on the side (the same values, so every later reader sees them).
  if (pk_ == PK::Scale && pxs_.out == x && ldx == w.cols && pxs_.n == static_cast<size_t>(T * w.cols) &&
      !overlap(y, ny, pxs_.x, pxs_.n) && !overlap(y, ny, pxs_.out, pxs_.n)) {
    const PendingCopyScale sc = pxs_;
    pk_ = PK::Gemv;
    pg_ = GemvJob{};
    pg_.part[0] = GemvPart{static_cast<const uint16_t*>(w.data), bias, y, w.rows, sc.s};
    pg_.nparts = 1;
    pg_.K = w.cols;
    pg_.x = sc.x;
    pg_.ldx = ldx;
    pg_.T = static_cast<int>(T);
    pg_.xs_out = sc.s;
    pg_.x_out = sc.out;
    return;
  }
  // Later GEMVs of the same x join; with a scale taken over, "the same x" is its output.
  const bool same_x = pg_.x_out ? pg_.x_out == x && ldx == pg_.K : pg_.x == x && pg_.ldx == ldx;
  if (pk_ == PK::Gemv && pg_.nparts < kGemvParts && pg_.epi == GemvJob::kNone && same_x && pg_.T == T &&
      pg_.K == w.cols && !job_touches(pg_, y, ny)) {
    pg_.part[pg_.nparts++] =
        GemvPart{static_cast<const uint16_t*>(w.data), bias, y, w.rows, pg_.x_out ? pg_.xs_out : 1.0f};
    return;
  }
  flush_pending();
  pk_ = PK::Gemv;
  pg_ = GemvJob{};
  pg_.part[0] = GemvPart{static_cast<const uint16_t*>(w.data), bias, y, w.rows};
  pg_.nparts = 1;
  pg_.K = w.cols;
  pg_.x = x;
  pg_.ldx = ldx;
  pg_.T = static_cast<int>(T);
  if (job_reads(pg_, y, ny)) flush_pending();  // in place: never joined
}

void DecodeStep::rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* positions,
                      const float* inv_freq) {
  const size_t pos = put(positions, static_cast<size_t>(T) * sizeof(int64_t), 1);
  const size_t freq = put(inv_freq, static_cast<size_t>(hd / 2) * sizeof(float), 2);
  const size_t nx = static_cast<size_t>((T - 1) * ld + int64_t(heads) * hd);
  RopePart part{x, ld, heads, false, 1.0f};
  if (psc_.on) {
    if (psc_.x == x && static_cast<size_t>(T * ld) == psc_.n && ld == int64_t(heads) * hd) {
      part.scaled = true;
      part.pre = psc_.s;
      psc_.on = false;
    } else if (overlap(psc_.x, psc_.n, x, nx)) {
      emit_scale();
    }
  }
  const RopePart& first = pr_.rp.part[0];
  if (pk_ == PK::Rope && pr_.rp.nparts == 1 && pr_.kv.nparts == 0 && pr_.T == T && pr_.hd == hd && pr_.pos == pos &&
      pr_.freq == freq && !overlap(x, nx, first.x, static_cast<size_t>((T - 1) * first.ld + int64_t(first.heads) * hd))) {
    pr_.rp.part[1] = part;
    pr_.rp.nparts = 2;
    return;
  }
  flush_pending(/*keep_scale=*/true);
  pk_ = PK::Rope;
  pr_ = PendingRope{};
  pr_.rp.part[0] = part;
  pr_.rp.nparts = 1;
  pr_.T = T;
  pr_.hd = hd;
  pr_.pos = pos;
  pr_.freq = freq;
}

void DecodeStep::kv_rows(float* const* caches, const int64_t* n_past, const float* src, int64_t n, int64_t width,
                         KvType kv_type) {
  const size_t oc = put(caches, n * sizeof(float*), -1), orow = put(n_past, n * sizeof(int64_t), -1);
  if (pk_ == PK::Rope && rope_takes_kv(src, n, width, kv_type)) {
    int from = -1;
    for (int r = 0; r < pr_.rp.nparts; ++r)
      if (pr_.rp.part[r].x == src) from = r;
    pr_.kv.add(oc, orow, src, n, width, kv_type, from);
    if (pr_.kv.nparts == 2) flush_pending();
    return;
  }
  if (pk_ == PK::Kv && pkv_.nparts == 1 && pkv_.n == n && pkv_.width == width && pkv_.kv == kv_type &&
      !overlap(src, static_cast<size_t>(n * width), pkv_.src[0], static_cast<size_t>(n * width))) {
    pkv_.add(oc, orow, src, n, width, kv_type);
    flush_pending();
    return;
  }
  flush_pending();
  pk_ = PK::Kv;
  pkv_ = PendingKv{};
  pkv_.add(oc, orow, src, n, width, kv_type);
}

KvRowsParts DecodeStep::kv_parts(const PendingKv& kv) const {
  KvRowsParts kp;
  for (int i = 0; i < kv.nparts; ++i)
    kp.part[i] = KvRowsPart{reinterpret_cast<void* const*>(dyn_dev_ + kv.off[i][0]),
                            reinterpret_cast<const int64_t*>(dyn_dev_ + kv.off[i][1]), kv.src[i], kv.from_rope[i]};
  return kp;
}

// Whether the KV write of n rows of src (width floats each) can join the pending rope: its rows
// are exactly a rope part's (stored as rotated), or apart from every rope part (copied).
bool DecodeStep::rope_takes_kv(const float* src, int64_t n, int64_t width, KvType kv_type) const {
  static const bool on = [] {  // FH1_CUDA_ROPE_KV=0 (tuning only): the KV writes apart
    const char* e = std::getenv("FH1_CUDA_ROPE_KV");
    return e == nullptr || std::string(e) != "0";
  }();
  const PendingKv& kv = pr_.kv;
  if (!on || pr_.T != n || kv.nparts >= 2 || (kv.nparts == 1 && (kv.width != width || kv.kv != kv_type))) return false;
  if (kv_type == KvType::Q8 && !rope_kv_q8_ok(pr_.hd, width)) return false;
  if (psc_.on && overlap(psc_.x, psc_.n, src, static_cast<size_t>(n * width))) return false;  // scaled first
  for (int r = 0; r < pr_.rp.nparts; ++r) {
    const RopePart& P = pr_.rp.part[r];
    if (P.x == src) return P.ld == width && int64_t(P.heads) * pr_.hd == width;
    if (overlap(src, static_cast<size_t>(n * width), P.x, static_cast<size_t>((n - 1) * P.ld + int64_t(P.heads) * pr_.hd)))
      return false;
  }
  return true;
}

void DecodeStep::scan_rows(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt,
                           int64_t ld_dt, int64_t n, const SsmParams& p, float* const* ssm_states, float* y) {
  flush_pending();
  pk_ = PK::Scan;
  ps_ = PendingScan{x, B, C, ld_xbc, dt, ld_dt, n, p, put(ssm_states, n * sizeof(float*), -1), y, nullptr, 0};
}

void DecodeStep::emit_scale() {
  if (!psc_.on) return;
  psc_.on = false;
  float* x = psc_.x;
  const size_t n = psc_.n;
  const float sc = psc_.s;
  record("scale", [=, this] { cuda::scale(x, n, sc, x, cur_); }, x, n, sc, x);
}

void DecodeStep::flush_pending(bool keep_scale) {
  if (!keep_scale) emit_scale();
  const PK k = pk_;
  pk_ = PK::None;
  switch (k) {
    case PK::None:
      return;
    case PK::Residual: {
      const PendingResidual r = pres_;
      record("residual_add2", [=, this] { residual_add2(r.h, r.a, r.sa, r.b, r.sb, r.n, cur_); }, r.h, r.a, r.sa, r.b,
             r.sb, r.n);
      return;
    }
    case PK::Scale: {
      const PendingCopyScale sc = pxs_;
      record("scale", [=, this] { cuda::scale(sc.x, sc.n, sc.s, sc.out, cur_); }, sc.x, sc.n, sc.s, sc.out);
      return;
    }
    case PK::Gemv: {
      const GemvJob j = pg_;
      // In a one-row step the attention's chain is the longer: the Mamba-2 out_proj beside it
      // launched ahead (PDL) held two thirds of the SMs' registers while it waited for the scan,
      // and the attention kernel could not start. With more rows the Mamba-2 chain is the longer.
      const int where = (branch_ == Branch::Beside ? 1 : branch_ == Branch::Side ? 2 : 0) * (step_rows_ == 1 ? 1 : 4);
      const bool plain = (plain_gemvs_ & where) != 0;
      record("gemv job", [=, this] {
        PdlOff off(plain);
        gemv_job(j, cur_);
      }, j.nparts, j.K, j.x, j.ldx, j.T, j.xs_out, j.x_out, j.epi, j.h, j.other, j.y_first, j.sa, j.sb, j.gs, j.out, plain);
      for (const GemvPart& p : j.part)
        for (uint64_t wd : {word(p.W), word(p.bias), word(p.y), word(p.N), word(p.xs), word(p.v)}) sig_.push_back(wd);
      return;
    }
    case PK::Rope: {
      const PendingRope r = pr_;
      const RopePart &a = r.rp.part[0], &b = r.rp.part[1];
      const PendingKv& kv = r.kv;
      record("rope parts", [=, this] {
        rope_kv_parts(r.rp, r.T, r.hd, reinterpret_cast<const int64_t*>(dyn_dev_ + r.pos),
                      reinterpret_cast<const float*>(dyn_dev_ + r.freq), kv_parts(kv), kv.nparts, kv.width, kv.kv,
                      cur_);
      }, r.rp.nparts, a.x, a.ld, a.heads, a.scaled, a.pre, b.x, b.ld, b.heads, b.scaled, b.pre, r.T, r.hd, r.pos,
             r.freq, kv.nparts, kv.off[0][0], kv.off[0][1], kv.src[0], kv.from_rope[0], kv.off[1][0], kv.off[1][1],
             kv.src[1], kv.from_rope[1], kv.width, kv.kv);
      return;
    }
    case PK::Kv: {
      const PendingKv kv = pkv_;
      record("kv rows", [=, this] {
        kv_write_rows_parts(kv_parts(kv), kv.nparts, kv.n, kv.width, kv.kv, cur_);
      }, kv.nparts, kv.off[0][0], kv.off[0][1], kv.src[0], kv.off[1][0], kv.off[1][1], kv.src[1], kv.n, kv.width,
             kv.kv);
      return;
    }
    case PK::Scan: {
      const PendingScan q = ps_;
      record("scan rows", [=, this] {
        ssm_scan_rows_gated(q.x, q.B, q.C, q.ld_xbc, q.dt, q.ld_dt, q.n, q.p,
                            reinterpret_cast<float* const*>(dyn_dev_ + q.off), q.z, q.ldz, q.y, cur_);
      }, q.x, q.B, q.C, q.ld_xbc, q.dt, q.ld_dt, q.n, q.p.heads, q.p.head_dim, q.p.groups, q.p.d_state, q.p.A, q.p.D,
             q.p.dt_bias, q.p.dt_min, q.p.dt_max, q.off, q.y, q.z, q.ldz);
      return;
    }
  }
}

}  // namespace fh1::cuda
