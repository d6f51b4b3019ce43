#include "model/state.h"

#include <algorithm>

namespace fh1 {

SequenceState::SequenceState(const ModelConfig& c, Kernels& kernels, int64_t initial_capacity)
    : kernels_(&kernels),
      kv_dim_(c.kv_dim()),
      conv_size_(static_cast<int64_t>(c.mamba_d_conv - 1) * c.conv_dim()),
      ssm_size_(static_cast<int64_t>(c.mamba_n_heads) * c.mamba_d_head * c.mamba_d_state) {
  layers_.resize(static_cast<size_t>(c.num_hidden_layers));
  for (auto& l : layers_) {
    l.conv = Buffer(kernels, static_cast<size_t>(conv_size_));
    l.ssm = Buffer(kernels, static_cast<size_t>(ssm_size_));
  }
  reserve(std::max<int64_t>(1, initial_capacity));
}

void SequenceState::reserve(int64_t rows) {
  if (rows <= capacity_) return;
  // Grow by a quarter (at least 256 rows): amortized copies stay cheap, and a long context (or a
  // snapshot cloned at its exact size) does not end up with twice the KV memory it uses.
  const int64_t new_cap = std::max(rows, capacity_ + std::max<int64_t>(256, capacity_ / 4));
  for (auto& l : layers_) {
    Buffer k(*kernels_, kv_floats(new_cap));
    Buffer v(*kernels_, kv_floats(new_cap));
    if (n_past_ > 0) {
      kernels_->copy(k.data(), l.k.data(), kv_floats(n_past_));
      kernels_->copy(v.data(), l.v.data(), kv_floats(n_past_));
    }
    l.k = std::move(k);
    l.v = std::move(v);
  }
  capacity_ = new_cap;
}

uint64_t SequenceState::memory_bytes() const {
  uint64_t floats = 0;
  for (const Layer& l : layers_) floats += l.k.size() + l.v.size() + l.conv.size() + l.ssm.size();
  return floats * sizeof(float);
}

size_t SequenceState::kv_floats(int64_t rows) const {
  return kernels_->kv_cache_floats(rows, kv_dim_);
}

void SequenceState::reset() {
  for (auto& l : layers_) {
    kernels_->zero(l.conv.data(), l.conv.size());
    kernels_->zero(l.ssm.data(), l.ssm.size());
  }
  n_past_ = 0;
}

SequenceState SequenceState::clone() const {
  SequenceState s;
  s.kernels_ = kernels_;
  s.kv_dim_ = kv_dim_;
  s.conv_size_ = conv_size_;
  s.ssm_size_ = ssm_size_;
  s.n_past_ = n_past_;
  s.capacity_ = std::max<int64_t>(1, n_past_);
  s.layers_.resize(layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& from = layers_[i];
    Layer& to = s.layers_[i];
    to.k = Buffer(*kernels_, kv_floats(s.capacity_));
    to.v = Buffer(*kernels_, kv_floats(s.capacity_));
    to.conv = Buffer(*kernels_, from.conv.size());
    to.ssm = Buffer(*kernels_, from.ssm.size());
    kernels_->copy(to.k.data(), from.k.data(), kv_floats(n_past_));
    kernels_->copy(to.v.data(), from.v.data(), kv_floats(n_past_));
    kernels_->copy(to.conv.data(), from.conv.data(), from.conv.size());
    kernels_->copy(to.ssm.data(), from.ssm.data(), from.ssm.size());
  }
  return s;
}

}  // namespace fh1
