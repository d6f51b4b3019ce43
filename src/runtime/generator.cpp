#include "runtime/generator.h"

#include <algorithm>
#include <chrono>

#include "util/error.h"

namespace fh1 {

std::vector<float> prefill(const Model& model, SequenceState& state, std::span<const int32_t> tokens, int64_t chunk) {
  if (tokens.empty()) throw Error("the prompt is empty: at least one token is needed");
  if (chunk <= 0) chunk = static_cast<int64_t>(tokens.size());
  std::vector<float> logits;
  for (size_t i = 0; i < tokens.size(); i += static_cast<size_t>(chunk)) {
    const size_t n = std::min(tokens.size() - i, static_cast<size_t>(chunk));
    logits = model.forward(state, tokens.subspan(i, n));
  }
  return logits;
}

int64_t prompt_chunk(const Model& model, const GenerateOptions& opt) {
  return opt.prefill_chunk > 0 ? opt.prefill_chunk : model.kernels().preferred_prompt_chunk();
}

int64_t context_limit(const Model& model, const GenerateOptions& opt) {
  return opt.context_length > 0 ? opt.context_length : model.config().max_position_embeddings;
}

GenerateResult generate(const Model& model, SequenceState& state, std::span<const int32_t> prompt,
                        const GenerateOptions& opt, const std::function<bool(int32_t)>& on_token) {
  const int64_t ctx = context_limit(model, opt);
  if (state.n_past() + static_cast<int64_t>(prompt.size()) > ctx)
    throw Error("the prompt has " + std::to_string(prompt.size()) + " tokens (plus " + std::to_string(state.n_past()) +
                " already in the context) but the context length is " + std::to_string(ctx));
  if (opt.max_new_tokens < 0) throw Error("the number of tokens to generate must be >= 0");
  Sampler check(opt.sampling);  // bad sampling parameters fail before any work
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits = prefill(model, state, prompt, prompt_chunk(model, opt));
  const double prefill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  GenerateResult r = continue_generation(model, state, std::move(logits), opt, on_token);
  r.prefill_seconds = prefill_s;
  return r;
}

GenerateResult continue_generation(const Model& model, SequenceState& state, std::vector<float> logits,
                                   const GenerateOptions& opt, const std::function<bool(int32_t)>& on_token) {
  const int64_t ctx = context_limit(model, opt);
  Sampler sampler(opt.sampling);
  GenerateResult result;
  result.finish_reason = "length";
  // A draw needs only the best few logits (greedy, top-k; top-p and min-p mostly) and the
  // softmax sum, or (temperature alone) the draw in vocabulary order: the backend computes them
  // where the logits are (on a GPU no vocabulary-sized copy per token). The first draw is from
  // the prompt's full logits.
  const Sampler::RowNeeds needs = sampler.row_needs();
  const size_t V = static_cast<size_t>(model.config().vocab_size);
  Model::TopLogits top;
  bool from_top = false;
  const auto t1 = std::chrono::steady_clock::now();
  for (int i = 0; i < opt.max_new_tokens; ++i) {
    const int32_t id = !from_top ? sampler.sample(logits)
                                 : sampler.sample_needs(top.ids, top.values, top.sums.empty() ? 0.0 : top.sums[0],
                                                        top.drawn.empty() ? -1 : top.drawn[0], V,
                                                        [&] { return top.row(0); });
    result.ids.push_back(id);
    if (on_token && !on_token(id)) {
      result.finish_reason = "cancelled";
      break;
    }
    if (!opt.ignore_eos && std::find(opt.eos_ids.begin(), opt.eos_ids.end(), id) != opt.eos_ids.end()) {
      result.finish_reason = "stop";
      break;
    }
    if (i + 1 == opt.max_new_tokens) break;
    if (state.n_past() + 1 > ctx) {
      result.finish_reason = "context";
      break;
    }
    const BatchItem item{&state, std::span<const int32_t>(&id, 1), false};
    top = Model::TopLogits{};  // the last step's logits freed before the next are made
    Model::TopRequest req;
    req.k = needs.k;
    if (needs.inv_t > 0.0) {
      req.inv_t = {needs.inv_t};
      req.u = {needs.in_order ? sampler.take_order_uniform() : -1.0};
    }
    top = model.forward_top(std::span<const BatchItem>(&item, 1), req);
    from_top = true;
  }
  result.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  return result;
}

}  // namespace fh1
