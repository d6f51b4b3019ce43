// Reading the transformers fixtures of tests/fixtures/models (made by
// tests/python/make_model_fixtures.py) and comparing logits.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "model/model.h"
#include "util/thread_pool.h"

namespace fh1::test {

struct Fixture {
  std::string name, dir;
  std::vector<int32_t> prompt_ids;          // teacher-forced sequence
  std::vector<float> logits;                // [prompt, vocab] from transformers
  std::vector<int32_t> greedy_prompt_ids, greedy_ids;
  std::vector<double> greedy_top2_margin;
};

std::vector<std::string> fixture_names();  // every directory under tests/fixtures/models
Fixture load_fixture(const std::string& name);

// max |a - b| / rms(ref)
double relative_max_diff(const std::vector<float>& a, const std::vector<float>& ref);

// The same model with every quantized matrix replaced by its dequantized values, stored as `to`
// (F32: exactly the dequantized weights; BF16: rounded as the CUDA backend uploads them).
Model dequantized_copy(const Model& quantized, Kernels& kernels, DType to);

// One backend for a test: a 2-thread pool and the CPU kernels.
struct Backend {
  ThreadPool pool{2};
  std::unique_ptr<Kernels> kernels = make_cpu_kernels(pool);
};

}  // namespace fh1::test
