// A loaded Falcon-H1 model: config + weights bound once to typed views (no string lookups in the
// forward pass), immutable after loading and shareable by any number of sequences.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "model/config.h"
#include "model/state.h"

namespace fh1 {

struct LayerWeights {
  Buffer input_norm, pre_ff_norm;
  // attention
  WeightView q_proj, k_proj, v_proj, o_proj;
  Buffer q_bias, k_bias, v_bias, o_bias;  // empty unless attention_bias
  // MLP
  WeightView gate_proj, up_proj, down_proj;
  Buffer gate_bias, up_bias, down_bias;  // empty unless mlp_bias
  // Mamba-2
  WeightView in_proj, out_proj;
  Buffer in_proj_bias, out_proj_bias;  // mamba_proj_bias / projectors_bias
  Buffer conv_weight;                  // [conv_dim, K]
  Buffer conv_bias;                    // empty unless mamba_conv_bias
  Buffer A;                            // -exp(A_log), [Hm]
  Buffer D, dt_bias;                   // [Hm]
  Buffer norm;                         // gated RMSNorm weight [ds], when mamba_rms_norm
};

// One sequence's share of a batched forward call.
struct BatchItem {
  SequenceState* state = nullptr;
  std::span<const int32_t> tokens;  // appended to the sequence
  bool all_logits = false;          // logits of every token, or only of the last
};

class Model {
 public:
  ~Model();
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;

  // Loads config.json and the safetensors weights of a Hugging Face directory; checks every
  // tensor's presence, dtype and shape. Throws fh1::Error.
  static Model load(const std::filesystem::path& dir, Kernels& kernels);
  // Binds weights from an already opened store (used by benchmarks with random weights).
  static Model from_store(const ModelConfig& config, TensorStore store, Kernels& kernels);

  const ModelConfig& config() const { return config_; }
  Kernels& kernels() const { return *kernels_; }
  const TensorStore& tensors() const { return store_; }
  uint64_t parameter_count() const;
  uint64_t weight_bytes() const { return store_.total_bytes(); }

  SequenceState new_state(int64_t initial_capacity = 256) const {
    return SequenceState(config_, *kernels_, initial_capacity);
  }

  // Runs the tokens of every item through the model, appending them to each item's state.
  // Returns host logits, [rows, vocab], rows in item order: every token of an item with
  // all_logits, else its last token only.
  std::vector<float> forward(std::span<const BatchItem> batch) const;

  // Convenience for one sequence.
  std::vector<float> forward(SequenceState& state, std::span<const int32_t> tokens, bool all_logits = false) const;

  // The same forward pass, but of every row of logits only the k best (ids and values, best
  // first, the lower id first on ties), selected by the backend where the logits are: what
  // greedy decoding and top-k sampling need (Sampler::sample_top), without the whole vocabulary
  // copied to the host. k is clamped to [1, vocab_size].
  struct TopLogits {
    int k = 0;
    std::vector<int32_t> ids;  // rows x k
    std::vector<float> values;
    std::vector<double> sums;    // TopRequest::inv_t given: per row, Kernels::softmax_rows
    std::vector<int32_t> drawn;  // and its draw in vocabulary order (-1: none)
    // TopRequest::logprobs given, of each row as the forward pass left it (before `lower`): the
    // log of the softmax's normalizer, max + log(sum of exp(v - max)) (NaN where not asked), and
    // the row's lp_k best (ids, values) as `ids` and `values` are.
    std::vector<double> log_z;
    int lp_k = 0;
    std::vector<int32_t> lp_ids;
    std::vector<float> lp_values;
    // Row i of the logits, copied now (a row the candidates do not settle); lowered, when the
    // request lowered it.
    std::vector<float> row(int64_t i) const;
    // The logit of token `id` in row i as the forward pass left it (before `lower`).
    float raw(int64_t i, int32_t id) const;

   private:
    friend class Model;
    Buffer logits_;  // rows x vocab, on the backend
    int64_t vocab_ = 0;
    std::vector<std::vector<std::pair<int32_t, float>>> before_lower_;  // per row: (id, value before)
  };
  TopLogits forward_top(std::span<const BatchItem> batch, int k) const;
  // With what sampling without top-k needs as well: per row of logits, the softmax sum at inverse
  // temperature inv_t[row] (0: none) and a draw in vocabulary order with uniform u[row] (< 0:
  // none), computed by the backend where the logits are (Kernels::softmax_rows). k = 0: no best
  // logits. inv_t and u: empty, or one value per row of logits.
  // lower (presence / frequency penalties): per row, entries lowered by an amount before anything
  // is selected: (token id, amount), the ids of a row distinct (Kernels::lower_entries). logprobs:
  // per row, the log-softmax wanted of the row before lowering, with that many alternatives
  // (>= 0; -1: none). Each: empty, or one entry per row of logits.
  struct TopRequest {
    int k = 1;
    std::vector<double> inv_t, u;
    std::vector<std::vector<std::pair<int32_t, float>>> lower;
    std::vector<int> logprobs;
  };
  TopLogits forward_top(std::span<const BatchItem> batch, const TopRequest& request) const;

  // Recording ahead (a backend that records decode steps, kernels.h; the CUDA backend's
  // set_decode_lookahead turns it off): after a decode step has been launched, the next step of
  // the same sequences is recorded while the device runs this one, and the next call with those
  // sequences at those lengths (one token each) only gives it its tokens. Anything else drops
  // it; the results are the same either way. A model's forward calls, like its backend's, come
  // from one thread at a time.

 private:
  struct Layout;
  struct Lookahead;
  Model();
  // forward() up to the logits, left in the backend's memory: *rows rows of vocab_size.
  Buffer forward_device(std::span<const BatchItem> batch, int64_t* rows) const;
  void lay_out(std::span<const BatchItem> batch, Layout* out) const;
  Buffer run_layers(const Layout& lay, std::vector<Buffer>* keep) const;
  void record_ahead(const Layout& done) const;
  bool matches(const Lookahead& ahead, const Layout& lay) const;
  std::vector<const float*> state_memory(const Layout& lay) const;
  void bind();

  ModelConfig config_;
  TensorStore store_;
  Kernels* kernels_ = nullptr;
  WeightView embed_tokens_, lm_head_;
  Buffer final_norm_;
  Buffer mup_vector_;            // per-column multipliers of in_proj's output
  std::vector<float> inv_freq_;  // RoPE, host
  std::vector<LayerWeights> layers_;
  mutable std::unique_ptr<Lookahead> ahead_;  // a decode step recorded ahead, or null
};

}  // namespace fh1
