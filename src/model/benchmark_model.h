// Models of the released Falcon-H1 shapes with random weights, built in memory, so that speed can
// be measured without downloading weights (falcon-h1 bench --shape). The shapes come from the
// table in ../shared/design/falcon-h1-model.md; values the table does not give are guessed and
// listed as such.
#pragma once

#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"

namespace fh1 {

class ThreadPool;

struct BenchmarkShape {
  ModelConfig config;
  std::vector<std::string> guessed;  // "intermediate_size=4096", ... : values not from a release
};

// Names: 0.5B, 1.5B, 1.5B-deep, 3B, 7B, 34B. Throws fh1::Error for others.
BenchmarkShape benchmark_shape(const std::string& name);
std::vector<std::string> benchmark_shape_names();

// Bytes of weights random_weights() would allocate for the config.
size_t random_weight_bytes(const ModelConfig& c, DType dtype);

// Every tensor the config needs, random (uniform, scaled by 1/sqrt(fan-in) so activations stay
// O(1)), matrices in `dtype` (BF16, F32, or quantized: Q8_0, Q4_0, Q4_K), vectors in F32. Filled on the pool's threads.
TensorStore random_weights(const ModelConfig& c, DType dtype, ThreadPool& pool, uint64_t seed = 1);

}  // namespace fh1
