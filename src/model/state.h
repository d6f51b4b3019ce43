// Per-sequence state of the hybrid model: for every layer, the attention KV cache (grows with
// the context), the conv cache (last K-1 conv inputs) and the SSM state (Hm x P x N). The conv
// and SSM parts have a fixed size whatever the context length. Owned by the caller.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/kernels.h"
#include "model/config.h"

namespace fh1 {

class SequenceState {
 public:
  SequenceState(const ModelConfig& config, Kernels& kernels, int64_t initial_capacity = 256);

  int64_t n_past() const { return n_past_; }  // tokens already consumed
  int64_t capacity() const { return capacity_; }

  // Makes room for `rows` KV rows per layer (keeps the content).
  void reserve(int64_t rows);
  // Forgets everything: back to an empty sequence.
  void reset();
  // A deep copy (a snapshot to resume from later).
  SequenceState clone() const;
  // Bytes of backend memory this state holds (KV caches at their capacity, in the backend's KV
  // type, conv and SSM states).
  uint64_t memory_bytes() const;

  // KV caches hold kernels.kv_cache_dtype() values (F32 or BF16) behind a float*.
  float* k_cache(int layer) { return layers_[layer].k.data(); }
  float* v_cache(int layer) { return layers_[layer].v.data(); }
  float* conv_state(int layer) { return layers_[layer].conv.data(); }
  float* ssm_state(int layer) { return layers_[layer].ssm.data(); }
  const float* ssm_state(int layer) const { return layers_[layer].ssm.data(); }

  void advance(int64_t n) { n_past_ += n; }

 private:
  SequenceState() = default;
  size_t kv_floats(int64_t rows) const;  // floats of alloc()ed memory for `rows` KV rows
  struct Layer {
    Buffer k, v, conv, ssm;
  };
  Kernels* kernels_ = nullptr;
  int64_t kv_dim_ = 0, conv_size_ = 0, ssm_size_ = 0;
  int64_t n_past_ = 0;
  int64_t capacity_ = 0;
  std::vector<Layer> layers_;
};

}  // namespace fh1
