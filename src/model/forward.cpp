// The forward pass of Falcon-H1, one hybrid layer readable in one place:
//   u = RMSNorm(h);  h += Mamba2(u * ssm_in) * ssm_out + Attention(u * attn_in) * attn_out
//   h += MLP(RMSNorm(h))
// Dense ops run on all tokens of the batch at once; the conv, scan and attention run per sequence
// on that sequence's state. See ../shared/design/falcon-h1-model.md.
#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "model/model.h"
#include "util/error.h"

namespace fh1 {
// One forward call's batch laid out as consecutive rows of tokens.
struct Model::Layout {
  struct Span {  // the rows of one batch item
    int64_t row = 0;  // first row
    int64_t T = 0;    // tokens
    SequenceState* state = nullptr;
    int64_t n_past = 0;
  };
  std::vector<Span> spans;
  std::vector<int32_t> ids;
  std::vector<int64_t> positions;
  std::vector<uint8_t> all_logits;  // per item
  int64_t logit_rows = 0;
  bool decode_step = false;  // one token per sequence
};

// A decode step recorded ahead of its tokens (Kernels::hold_next_decode_step): what it was
// recorded for (the sequences, their lengths and every layer's state memory), and the
// activations and logits its recorded ops use, kept until it runs or is dropped.
struct Model::Lookahead {
  uint64_t ticket = 0;  // the backend's, for the step it holds
  std::vector<SequenceState*> states;
  std::vector<int64_t> n_past;
  std::vector<uint8_t> all_logits;
  std::vector<const float*> memory;
  std::vector<Buffer> activations;
  Buffer logits;
};

// Every layer's KV caches, conv and SSM states of the laid-out sequences: a recorded step holds
// these addresses.
std::vector<const float*> Model::state_memory(const Layout& lay) const {
  const int layers = config_.num_hidden_layers;
  std::vector<const float*> m;
  m.reserve(lay.spans.size() * static_cast<size_t>(layers) * 4);
  for (const auto& s : lay.spans)
    for (int l = 0; l < layers; ++l)
      for (const float* p : {s.state->k_cache(l), s.state->v_cache(l), s.state->conv_state(l), s.state->ssm_state(l)})
        m.push_back(p);
  return m;
}

Model::Model() = default;
Model::~Model() {
  if (ahead_ && kernels_) kernels_->drop_held_step(ahead_->ticket);
}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;

std::vector<float> Model::forward(SequenceState& state, std::span<const int32_t> tokens, bool all_logits) const {
  const BatchItem item{&state, tokens, all_logits};
  return forward(std::span<const BatchItem>(&item, 1));
}

std::vector<float> Model::forward(std::span<const BatchItem> batch) const {
  int64_t rows = 0;
  Buffer logits = forward_device(batch, &rows);
  std::vector<float> out(static_cast<size_t>(rows * config_.vocab_size));
  if (!out.empty()) kernels_->to_host(out.data(), logits.data(), out.size());
  return out;
}

Model::TopLogits Model::forward_top(std::span<const BatchItem> batch, int k) const {
  TopRequest req;
  req.k = std::max(k, 1);
  return forward_top(batch, req);
}

Model::TopLogits Model::forward_top(std::span<const BatchItem> batch, const TopRequest& req) const {
  int64_t rows = 0;
  for (const BatchItem& it : batch) rows += it.all_logits ? static_cast<int64_t>(it.tokens.size()) : 1;
  const bool sums = !req.inv_t.empty();
  if (sums && (static_cast<int64_t>(req.inv_t.size()) != rows || static_cast<int64_t>(req.u.size()) != rows))
    throw Error("forward_top: inv_t and u need one value per row of logits (" + std::to_string(rows) + ")");
  if ((!req.lower.empty() && static_cast<int64_t>(req.lower.size()) != rows) ||
      (!req.logprobs.empty() && static_cast<int64_t>(req.logprobs.size()) != rows))
    throw Error("forward_top: lower and logprobs need one entry per row of logits (" + std::to_string(rows) + ")");
  const int64_t V = config_.vocab_size;
  std::vector<int64_t> index;  // the entries to lower, flattened over the rows
  std::vector<float> amount;
  for (size_t r = 0; r < req.lower.size(); ++r)
    for (const auto& [id, a] : req.lower[r]) {
      if (id < 0 || id >= V) throw Error("forward_top: token id " + std::to_string(id) + " is outside the vocabulary");
      index.push_back(static_cast<int64_t>(r) * V + id);
      amount.push_back(a);
    }
  {  // Kernels::lower_entries takes distinct entries (a GPU lowers them all at once)
    std::vector<int64_t> sorted = index;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
      throw Error("forward_top: a token is lowered twice in one row");
  }
  TopLogits top;
  top.k = req.k <= 0 ? 0 : static_cast<int>(std::min<int64_t>(req.k, V));
  top.vocab_ = V;
  top.logits_ = forward_device(batch, &rows);
  if (rows > 0 && !req.logprobs.empty()) {  // of the rows as they are, before any lowering
    int want = -1;
    for (int n : req.logprobs) want = std::max(want, n);
    if (want >= 0) {
      top.lp_k = static_cast<int>(std::clamp<int64_t>(want, 1, V));
      top.lp_ids.resize(static_cast<size_t>(rows * top.lp_k));
      top.lp_values.resize(top.lp_ids.size());
      kernels_->top_k_rows(top.logits_.data(), rows, V, top.lp_k, top.lp_ids.data(), top.lp_values.data());
      std::vector<double> inv_t(static_cast<size_t>(rows)), u(static_cast<size_t>(rows), -1.0), sums(inv_t.size());
      std::vector<int32_t> drawn(inv_t.size());
      for (size_t r = 0; r < inv_t.size(); ++r) inv_t[r] = req.logprobs[r] >= 0 ? 1.0 : 0.0;
      kernels_->softmax_rows(top.logits_.data(), rows, V, inv_t.data(), u.data(), sums.data(), drawn.data());
      top.log_z.assign(inv_t.size(), std::nan(""));
      for (size_t r = 0; r < inv_t.size(); ++r)  // softmax_draw's sum at inverse temperature 1: relative to the max
        if (req.logprobs[r] >= 0) top.log_z[r] = top.lp_values[r * static_cast<size_t>(top.lp_k)] + std::log(sums[r]);
    }
  }
  if (!index.empty()) {
    std::vector<float> before(index.size());
    kernels_->lower_entries(top.logits_.data(), static_cast<int64_t>(index.size()), index.data(), amount.data(),
                            before.data());
    top.before_lower_.resize(req.lower.size());
    for (size_t r = 0, i = 0; r < req.lower.size(); ++r)
      for (const auto& e : req.lower[r]) top.before_lower_[r].emplace_back(e.first, before[i++]);
  }
  top.ids.resize(static_cast<size_t>(rows * top.k));
  top.values.resize(top.ids.size());
  if (rows > 0 && top.k > 0)
    kernels_->top_k_rows(top.logits_.data(), rows, config_.vocab_size, top.k, top.ids.data(), top.values.data());
  if (sums) {
    top.sums.resize(static_cast<size_t>(rows));
    top.drawn.resize(static_cast<size_t>(rows));
    if (rows > 0)
      kernels_->softmax_rows(top.logits_.data(), rows, config_.vocab_size, req.inv_t.data(), req.u.data(),
                             top.sums.data(), top.drawn.data());
  }
  return top;
}

float Model::TopLogits::raw(int64_t i, int32_t id) const {
  if (!logits_.data() || i < 0 || (i + 1) * vocab_ > static_cast<int64_t>(logits_.size()) || id < 0 || id >= vocab_)
    throw Error("TopLogits::raw: no logit " + std::to_string(id) + " in row " + std::to_string(i));
  if (static_cast<size_t>(i) < before_lower_.size())
    for (const auto& [lowered, v] : before_lower_[static_cast<size_t>(i)])
      if (lowered == id) return v;
  const size_t L = static_cast<size_t>(lp_k), r = static_cast<size_t>(i);
  for (size_t j = 0; j < L && (r + 1) * L <= lp_ids.size(); ++j)  // the best of the row: no copy
    if (lp_ids[r * L + j] == id) return lp_values[r * L + j];
  float v = 0.0f;
  logits_.kernels()->to_host(&v, logits_.data() + i * vocab_ + id, 1);
  return v;
}

std::vector<float> Model::TopLogits::row(int64_t i) const {
  if (!logits_.data() || i < 0 || (i + 1) * vocab_ > static_cast<int64_t>(logits_.size()))
    throw Error("TopLogits::row: no row " + std::to_string(i));
  std::vector<float> v(static_cast<size_t>(vocab_));
  logits_.kernels()->to_host(v.data(), logits_.data() + i * vocab_, v.size());
  return v;
}

Buffer Model::forward_device(std::span<const BatchItem> batch, int64_t* rows_out) const {
  *rows_out = 0;
  Layout lay;
  lay_out(batch, &lay);
  if (lay.ids.empty()) return Buffer();
  std::unique_ptr<Lookahead> ahead = std::move(ahead_);  // run now or dropped
  Buffer logits;
  if (ahead && lay.decode_step && matches(*ahead, lay) &&
      kernels_->launch_held_step(ahead->ticket, lay.ids.data(), static_cast<int64_t>(lay.ids.size()))) {
    logits = std::move(ahead->logits);
  } else {
    if (ahead) kernels_->drop_held_step(ahead->ticket);
    ahead.reset();  // its memory back before this step takes its own
    logits = run_layers(lay, nullptr);
  }
  ahead.reset();  // the step's activations: reused in stream order by the next
  for (const auto& s : lay.spans) s.state->advance(s.T);
  *rows_out = lay.logit_rows;
  if (lay.decode_step) record_ahead(lay);
  return logits;
}

bool Model::matches(const Lookahead& a, const Layout& lay) const {
  if (a.states.size() != lay.spans.size() || a.all_logits != lay.all_logits) return false;
  for (size_t i = 0; i < lay.spans.size(); ++i)
    if (a.states[i] != lay.spans[i].state || a.n_past[i] != lay.spans[i].n_past) return false;
  return a.memory == state_memory(lay);
}

// After a decode step has been launched: the next one of the same sequences recorded while the
// device runs this one (placeholder tokens, held by the backend until the next call gives them).
// Not when a sequence would need a larger KV cache (the growth is left to a step that runs).
void Model::record_ahead(const Layout& done) const {
  for (const auto& s : done.spans)
    if (s.state->n_past() + 1 > s.state->capacity()) return;
  const uint64_t ticket = kernels_->hold_next_decode_step();
  if (ticket == 0) return;
  try {
    const std::vector<int32_t> placeholder(done.spans.size(), 0);
    std::vector<BatchItem> next(done.spans.size());
    for (size_t i = 0; i < next.size(); ++i)
      next[i] = BatchItem{done.spans[i].state, std::span<const int32_t>(&placeholder[i], 1), done.all_logits[i] != 0};
    Layout lay;
    lay_out(next, &lay);
    auto ahead = std::make_unique<Lookahead>();
    ahead->ticket = ticket;
    ahead->logits = run_layers(lay, &ahead->activations);
    for (const auto& s : lay.spans) {
      ahead->states.push_back(s.state);
      ahead->n_past.push_back(s.n_past);
    }
    ahead->all_logits = lay.all_logits;
    ahead->memory = state_memory(lay);
    ahead_ = std::move(ahead);
  } catch (const std::exception&) {
    kernels_->drop_held_step(ticket);  // the next step records itself (and reports what fails)
  }
}

// Lays the items out as consecutive rows; checks the inputs before touching any state, then
// makes room in each sequence's KV cache.
void Model::lay_out(std::span<const BatchItem> batch, Layout* out) const {
  const ModelConfig& c = config_;
  Layout& lay = *out;
  std::set<const SequenceState*> seen;
  for (const BatchItem& it : batch) {
    if (it.state == nullptr || it.tokens.empty()) throw Error("forward: every batch item needs a state and at least one token");
    if (!seen.insert(it.state).second) throw Error("forward: the same sequence appears twice in one batch");
    for (int32_t id : it.tokens)
      if (id < 0 || id >= c.vocab_size)
        throw Error("token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
    Layout::Span s{static_cast<int64_t>(lay.ids.size()), static_cast<int64_t>(it.tokens.size()), it.state,
                   it.state->n_past()};
    for (int64_t t = 0; t < s.T; ++t) lay.positions.push_back(s.n_past + t);
    lay.ids.insert(lay.ids.end(), it.tokens.begin(), it.tokens.end());
    lay.logit_rows += it.all_logits ? s.T : 1;
    lay.all_logits.push_back(it.all_logits ? 1 : 0);
    lay.spans.push_back(s);
  }
  lay.decode_step = !lay.spans.empty();
  for (const auto& s : lay.spans) {
    s.state->reserve(s.n_past + s.T);
    lay.decode_step = lay.decode_step && s.T == 1;
  }
}

// The layers, the final norm and lm_head over the laid-out rows; returns the logits (left in the
// backend's memory). States are not advanced. keep: a held decode step's activations go there
// (its ops are recorded, not run, when this returns).
Buffer Model::run_layers(const Layout& lay, std::vector<Buffer>* keep) const {
  const ModelConfig& c = config_;
  Kernels& k = *kernels_;
  const int64_t d = c.hidden_size, V = c.vocab_size;
  const std::vector<Layout::Span>& spans = lay.spans;
  const int64_t T = static_cast<int64_t>(lay.ids.size()), logit_rows = lay.logit_rows;
  const bool decode_step = lay.decode_step;
  const std::vector<int64_t>& positions = lay.positions;

  const int64_t ds = c.mamba_d_ssm, GN = static_cast<int64_t>(c.mamba_n_groups) * c.mamba_d_state;
  const int64_t in_dim = c.in_proj_dim(), conv_dim = c.conv_dim();
  const int64_t qd = c.q_dim(), kvd = c.kv_dim(), ff = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);

  // Activations: every op writes all T rows of its output before anything reads them.
  const Buffer::Uninit uninit;
  Buffer h(k, T * d, uninit), u(k, T * d, uninit), x_in(k, T * d, uninit);
  Buffer zxbcdt(k, T * in_dim, uninit), xbc(k, T * conv_dim, uninit), y(k, T * ds, uninit), mixer_out(k, T * d, uninit);
  Buffer q(k, T * qd, uninit), kk(k, T * kvd, uninit), vv(k, T * kvd, uninit);
  Buffer att(k, T * qd, uninit), att_out(k, T * d, uninit);
  Buffer gate(k, T * ff, uninit), up(k, T * ff, uninit);

  SsmParams ssm;
  ssm.heads = c.mamba_n_heads;
  ssm.head_dim = c.mamba_d_head;
  ssm.groups = c.mamba_n_groups;
  ssm.d_state = c.mamba_d_state;
  ssm.chunk_size = c.mamba_chunk_size;
  ssm.dt_min = static_cast<float>(c.time_step_min);
  ssm.dt_max = static_cast<float>(c.time_step_max);

  // A decode step (one new token per sequence) may be recorded and replayed by the backend as a
  // unit (kernels.h); the ops are the same either way.
  struct DecodeStepScope {  // ends the step also when an op throws
    Kernels* k = nullptr;
    ~DecodeStepScope() {
      if (k) try { k->end_decode_step(); } catch (...) {}
    }
  } step_scope;
  if (decode_step) {
    k.begin_decode_step();
    step_scope.k = &k;
  }

  // Per-sequence state pointers of one layer, for the decode step's row-wise ops.
  std::vector<float*> conv_states(spans.size()), ssm_states(spans.size()), k_caches(spans.size()),
      v_caches(spans.size());
  std::vector<int64_t> n_pasts(spans.size());
  for (size_t i = 0; i < spans.size(); ++i) n_pasts[i] = spans[i].n_past;

  k.embed(lay.ids.data(), T, embed_tokens_, static_cast<float>(c.embedding_multiplier), h.data());

  const auto mlp_out_multiplier = static_cast<float>(c.mlp_multipliers[1]);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = layers_[static_cast<size_t>(l)];
    // The previous layer's MLP joins the residual stream here, with the norm that reads it.
    if (l == 0) k.rmsnorm(h.data(), T, d, L.input_norm.data(), eps, u.data());
    else
      k.residual_rmsnorm(h.data(), mixer_out.data(), mlp_out_multiplier, nullptr, 0.0f, T, d, L.input_norm.data(), eps,
                         u.data());

    // ---- input projections of both mixers ----
    const Kernels::Projection in_proj[] = {{&L.in_proj, L.in_proj_bias.data(), zxbcdt.data(), mup_vector_.data()}};
    k.matmul_scaled(u.data(), d, T, static_cast<float>(c.ssm_in_multiplier), x_in.data(), in_proj, 1);
    // The attention's projections read the same normalized input: issued next to the in_proj, a
    // backend can run them as one pass over the weights (the two mixers are independent).
    const Kernels::Projection qkv[] = {{&L.q_proj, L.q_bias.data(), q.data()},
                                       {&L.k_proj, L.k_bias.data(), kk.data()},
                                       {&L.v_proj, L.v_bias.data(), vv.data()}};
    k.matmul_scaled(u.data(), d, T, static_cast<float>(c.attention_in_multiplier), x_in.data(), qkv, 3);
    // The attention and the Mamba-2 mixer are independent until they join the residual stream: a
    // backend may run the attention as a branch beside the mixer (kernels.h).
    k.branch_begin(T);
    // ---- attention ----
    k.scale(kk.data(), T * kvd, static_cast<float>(c.key_multiplier), kk.data());
    k.rope(q.data(), qd, T, c.num_attention_heads, c.head_dim, positions.data(), inv_freq_.data());
    k.rope(kk.data(), kvd, T, c.num_key_value_heads, c.head_dim, positions.data(), inv_freq_.data());
    if (decode_step) {
      for (size_t i = 0; i < spans.size(); ++i) {
        k_caches[i] = spans[i].state->k_cache(l);
        v_caches[i] = spans[i].state->v_cache(l);
      }
      k.kv_write_rows(k_caches.data(), n_pasts.data(), kk.data(), T, kvd);
      k.kv_write_rows(v_caches.data(), n_pasts.data(), vv.data(), T, kvd);
      k.attention_rows(q.data(), qd, T, k_caches.data(), v_caches.data(), n_pasts.data(), c.num_attention_heads,
                       c.num_key_value_heads, c.head_dim, 1.0f / std::sqrt(static_cast<float>(c.head_dim)), att.data());
    }
    for (const Layout::Span& s : spans) {
      if (decode_step) break;
      float* kc = s.state->k_cache(l);
      float* vc = s.state->v_cache(l);
      k.kv_write(kc, s.n_past, kk.data() + s.row * kvd, s.T, kvd);
      k.kv_write(vc, s.n_past, vv.data() + s.row * kvd, s.T, kvd);
      k.attention(q.data() + s.row * qd, qd, s.T, kc, vc, s.n_past, c.num_attention_heads, c.num_key_value_heads,
                  c.head_dim, 1.0f / std::sqrt(static_cast<float>(c.head_dim)), att.data() + s.row * qd);
    }
    k.matmul(att.data(), qd, T, L.o_proj, L.o_bias.data(), att_out.data());
    k.branch_end();

    // ---- Mamba-2 mixer ----
    ssm.A = L.A.data();
    ssm.D = L.D.data();
    ssm.dt_bias = L.dt_bias.data();
    if (decode_step) {  // one token per sequence: every sequence in one call per op
      for (size_t i = 0; i < spans.size(); ++i) {
        conv_states[i] = spans[i].state->conv_state(l);
        ssm_states[i] = spans[i].state->ssm_state(l);
      }
      k.conv1d_silu_rows(zxbcdt.data() + ds, in_dim, T, conv_dim, c.mamba_d_conv, L.conv_weight.data(),
                         L.conv_bias.data(), conv_states.data(), xbc.data());
      k.ssm_scan_rows(xbc.data(), xbc.data() + ds, xbc.data() + ds + GN, conv_dim, zxbcdt.data() + ds + conv_dim, in_dim,
                      T, ssm, ssm_states.data(), y.data());
    }
    for (const Layout::Span& s : spans) {
      if (decode_step) break;
      const float* zr = zxbcdt.data() + s.row * in_dim;  // [z | xBC | dt]
      float* xr = xbc.data() + s.row * conv_dim;           // [x | B | C] after conv + SiLU
      k.conv1d_silu(zr + ds, in_dim, s.T, conv_dim, c.mamba_d_conv, L.conv_weight.data(), L.conv_bias.data(),
                    s.state->conv_state(l), xr);
      k.ssm_scan(xr, xr + ds, xr + ds + GN, conv_dim, zr + ds + conv_dim, in_dim, s.T, ssm, s.state->ssm_state(l),
                 y.data() + s.row * ds);
    }
    if (c.mamba_rms_norm) {
      k.gated_rmsnorm(y.data(), zxbcdt.data(), in_dim, T, ds, c.mamba_n_groups, L.norm.data(), eps,
                      c.mamba_norm_before_gate);
      k.matmul(y.data(), ds, T, L.out_proj, L.out_proj_bias.data(), mixer_out.data());
    } else {
      k.gate_silu_matmul(y.data(), zxbcdt.data(), in_dim, T, L.out_proj, L.out_proj_bias.data(), mixer_out.data());
    }
    k.branch_join();

    // The two mixers join the residual stream together; the MLP's norm reads the sum.
    k.residual_rmsnorm(h.data(), mixer_out.data(), static_cast<float>(c.ssm_out_multiplier), att_out.data(),
                       static_cast<float>(c.attention_out_multiplier), T, d, L.pre_ff_norm.data(), eps, u.data());

    // ---- MLP ----
    const Kernels::Mlp mlp{&L.gate_proj, L.gate_bias.data(), &L.up_proj, L.up_bias.data(),
                           static_cast<float>(c.mlp_multipliers[0]), &L.down_proj, L.down_bias.data()};
    k.mlp(u.data(), d, T, mlp, gate.data(), up.data(), mixer_out.data());
    // (its residual add: the next layer's first op, or the last layer's below)
  }
  if (c.num_hidden_layers > 0)
    k.residual_add(h.data(), mixer_out.data(), mlp_out_multiplier, static_cast<size_t>(T * d));

  // Final norm and lm_head only on the rows whose logits are wanted.
  Buffer picked(k, logit_rows * d, uninit);
  int64_t r = 0;
  for (size_t i = 0; i < spans.size(); ++i) {
    const Layout::Span& s = spans[i];
    const int64_t n = lay.all_logits[i] ? s.T : 1;
    k.copy(picked.data() + r * d, h.data() + (s.row + s.T - n) * d, static_cast<size_t>(n * d));
    r += n;
  }
  k.rmsnorm(picked.data(), logit_rows, d, final_norm_.data(), eps, picked.data());
  Buffer logits(k, logit_rows * V, uninit);
  k.matmul(picked.data(), d, logit_rows, lm_head_, nullptr, logits.data());
  k.scale(logits.data(), static_cast<size_t>(logit_rows * V), static_cast<float>(c.lm_head_multiplier), logits.data());
  if (decode_step) {
    step_scope.k = nullptr;
    k.end_decode_step();
  }
  if (keep) {
    for (Buffer* b : {&h, &u, &x_in, &zxbcdt, &xbc, &y, &mixer_out, &q, &kk, &vv, &att, &att_out, &gate, &up, &picked})
      keep->push_back(std::move(*b));
  }
  return logits;
}

}  // namespace fh1
