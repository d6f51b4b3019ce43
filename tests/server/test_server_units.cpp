// Unit tests of the server's C++ parts: stop strings, the state cache, the scheduler (batched
// requests give what each gives alone; cancellation; cache hits) and request parsing.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <thread>

#include <gtest/gtest.h>

#include "runtime/generator.h"
#include "runtime/scheduler.h"
#include "runtime/state_cache.h"
#include "runtime/text_model.h"
#include "server/api_error.h"
#include "server/openai_request.h"
#include "server/stop_strings.h"
#include "util/thread_pool.h"

namespace fh1 {
namespace {

const std::string kModelDir = std::string(FH1_FIXTURES_DIR) + "/server/model";

struct Loaded {
  ThreadPool pool{2};
  std::unique_ptr<Kernels> kernels = make_cpu_kernels(pool);
  Model model = Model::load(kModelDir, *kernels);
};

std::vector<int32_t> greedy_alone(const Model& model, const std::vector<int32_t>& prompt, int n) {
  SequenceState state = model.new_state();
  GenerateOptions g;
  g.max_new_tokens = n;
  return generate(model, state, prompt, g).ids;
}

std::vector<int32_t> run_to_end(const std::shared_ptr<GenerationRequest>& r, GenerationResult* result = nullptr) {
  std::vector<GeneratedToken> tokens;
  std::optional<GenerationResult> done;
  while (!(done = r->wait_for(std::chrono::milliseconds(50), tokens))) {
  }
  std::vector<int32_t> ids;
  for (const auto& t : tokens) ids.push_back(t.id);
  if (result) *result = *done;
  return ids;
}

TEST(StopStrings, HoldsBackPartialMatches) {
  server::StopStringMatcher m({"STOP", "xy"});
  EXPECT_EQ(m.push("hello S"), "hello ");
  EXPECT_EQ(m.push("T"), "");
  EXPECT_EQ(m.push("an"), "STan");
  EXPECT_EQ(m.push("d x"), "d ");
  EXPECT_EQ(m.push("yz"), "");
  EXPECT_TRUE(m.matched());
  EXPECT_EQ(m.push("more"), "");
  server::StopStringMatcher n({"END"});
  EXPECT_EQ(n.push("the E"), "the ");
  EXPECT_EQ(n.flush(), "E");
  server::StopStringMatcher none({});
  EXPECT_EQ(none.push("abc"), "abc");
}

TEST(StopStrings, EarliestMatchWins) {
  server::StopStringMatcher m({"cd", "b"});
  EXPECT_EQ(m.push("abcd"), "a");
}

TEST(StateCache, LongestProperPrefixAndLru) {
  Loaded l;
  const auto& c = l.model.config();
  StateCache cache(c.state_bytes(10) * 2 + 1);  // room for two 10-token states (float32 KV)
  auto state_of = [&](std::vector<int32_t> ids) {
    SequenceState s = l.model.new_state();
    l.model.forward(s, ids);
    return s;
  };
  cache.insert(std::vector<int32_t>{1, 2, 3}, state_of({1, 2, 3}));
  cache.insert(std::vector<int32_t>{1, 2, 3, 4, 5}, state_of({1, 2, 3, 4, 5}));
  auto hit = cache.lookup(std::vector<int32_t>{1, 2, 3, 4, 5, 6});
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->tokens, 5);
  EXPECT_EQ(hit->state.n_past(), 5);
  hit = cache.lookup(std::vector<int32_t>{1, 2, 3, 4, 5});  // proper prefix only
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->tokens, 3);
  EXPECT_FALSE(cache.lookup(std::vector<int32_t>{9, 1, 2, 3}));
  // the restored state continues exactly like the original
  const std::vector<int32_t> rest{6, 7};
  SequenceState full = state_of({1, 2, 3, 4, 5});
  auto a = l.model.forward(full, rest);
  auto again = cache.lookup(std::vector<int32_t>{1, 2, 3, 4, 5, 6});
  auto b = l.model.forward(again->state, rest);
  EXPECT_EQ(a, b);
  // a third 10-token state evicts the least recently used
  cache.insert(std::vector<int32_t>(10, 7), state_of(std::vector<int32_t>(10, 7)));
  EXPECT_LE(cache.stats().bytes, cache.stats().max_bytes);
  EXPECT_GE(cache.stats().evictions, 1u);
}

// Unset, the prompt chunk of a generation and a server step's budget are the backend's: on the
// CPU 512 and 256 tokens (CUDA: 8192 and 2048); set, they are as given.
TEST(Scheduler, PromptChunksDefaultToTheBackends) {
  Loaded l;
  EXPECT_EQ(l.kernels->preferred_prompt_chunk(), 512);
  GenerateOptions g;
  EXPECT_EQ(prompt_chunk(l.model, g), 512);
  g.prefill_chunk = 3;
  EXPECT_EQ(prompt_chunk(l.model, g), 3);
  EXPECT_EQ(default_step_tokens(*l.kernels), 256);
  SchedulerOptions o;
  EXPECT_EQ(Scheduler(l.model, o).step_tokens(), 256);
  o.step_tokens = 7;
  EXPECT_EQ(Scheduler(l.model, o).step_tokens(), 7);
}

TEST(Scheduler, BatchedRequestsMatchEachAlone) {
  Loaded l;
  SchedulerOptions o;
  o.parallel = 3;  // 6 requests: some wait in the queue
  o.step_tokens = 7;  // prompts are fed in several chunks, interleaved with decoding
  Scheduler s(l.model, o);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p;
    for (int t = 0; t < 5 + 6 * i; ++t) p.push_back(3 + (t * 7 + i * 13) % 300);
    prompts.push_back(p);
  }
  // Only one thread may run the model at a time (its thread pool is not shared): the references
  // first, then the scheduler.
  std::vector<std::vector<int32_t>> expected;
  for (const auto& p : prompts) expected.push_back(greedy_alone(l.model, p, 12));
  std::vector<std::shared_ptr<GenerationRequest>> reqs;
  for (const auto& p : prompts) {
    GenerationParams g;
    g.prompt = p;
    g.max_tokens = 12;
    reqs.push_back(std::make_shared<GenerationRequest>(g));
    ASSERT_EQ(s.submit(reqs.back()), Scheduler::Admission::accepted);
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    GenerationResult r;
    EXPECT_EQ(run_to_end(reqs[i], &r), expected[i]) << "request " << i;
    EXPECT_EQ(r.finish_reason, "length");
    EXPECT_EQ(r.completion_tokens, 12);
  }
}

// Sampled requests batched give, seed for seed, what generate() gives each alone: the scheduler
// asks the backend for what each draw needs (Sampler::row_needs: the best logits, the softmax
// sum, the draw in vocabulary order with the uniform taken before the step) and takes a row's
// uniform only when its prompt ends in that step. A request with a penalty among them has its
// logits lowered by the backend (PenaltiesAndLogprobsMatchTheWholeRow checks its tokens).
TEST(Scheduler, SampledRequestsMatchEachAlone) {
  Loaded l;
  SchedulerOptions o;
  o.parallel = 4;
  o.step_tokens = 7;  // prompts in several chunks, interleaved with the others' draws
  Scheduler s(l.model, o);
  const SamplingParams kinds[] = {{1.0f, 0, 1.0f, 0.0f, 11}, {0.7f, 0, 1.0f, 0.0f, 12}, {1.2f, 0, 0.9f, 0.0f, 13},
                                  {1.0f, 0, 1.0f, 0.1f, 14},  {0.9f, 8, 0.95f, 0.0f, 15}, {0.0f, 0, 1.0f, 0.0f, 16},
                                  {1.5f, 0, 0.999f, 0.0f, 17}};
  std::vector<std::vector<int32_t>> prompts, expected;
  for (size_t i = 0; i < std::size(kinds); ++i) {
    std::vector<int32_t> p;
    for (size_t t = 0; t < 4 + 5 * i; ++t) p.push_back(static_cast<int32_t>(3 + (t * 11 + i * 17) % 300));
    prompts.push_back(p);
    SequenceState state = l.model.new_state();
    GenerateOptions g;
    g.max_new_tokens = 12;
    g.sampling = kinds[i];
    expected.push_back(generate(l.model, state, p, g).ids);
  }
  std::vector<std::shared_ptr<GenerationRequest>> reqs;
  for (size_t i = 0; i < std::size(kinds); ++i) {
    GenerationParams g;
    g.prompt = prompts[i];
    g.max_tokens = 12;
    g.sampling = kinds[i];
    reqs.push_back(std::make_shared<GenerationRequest>(g));
    ASSERT_EQ(s.submit(reqs.back()), Scheduler::Admission::accepted);
    if (i == 2) {  // a penalized request among them
      GenerationParams pen = g;
      pen.presence_penalty = 0.5f;
      reqs.push_back(std::make_shared<GenerationRequest>(pen));
      ASSERT_EQ(s.submit(reqs.back()), Scheduler::Admission::accepted);
    }
  }
  for (size_t i = 0, k = 0; i < reqs.size(); ++i) {
    const std::vector<int32_t> got = run_to_end(reqs[i]);
    if (reqs[i]->params().presence_penalty != 0.0f) {
      EXPECT_EQ(got.size(), 12u);
      continue;
    }
    EXPECT_EQ(got, expected[k]) << "request " << k << ", temperature " << kinds[k].temperature;
    ++k;
  }
}

// Penalties and logprobs are computed where the logits are (Model::forward_top: the generated
// tokens' logits lowered by the backend, the normalizer and best alternatives of the row before
// that): seed for seed the tokens, and the logprobs, of a loop over the whole row on the host
// (the penalties subtracted there, the log-softmax of the row as it came), with the requests
// batched and their prompts fed in chunks.
TEST(Scheduler, PenaltiesAndLogprobsMatchTheWholeRow) {
  Loaded l;
  SchedulerOptions o;
  o.parallel = 4;
  o.step_tokens = 6;
  Scheduler s(l.model, o);
  struct Kind {
    SamplingParams sampling;
    float presence, frequency;
    int top_logprobs;
  };
  const Kind kinds[] = {{{1.0f, 0, 1.0f, 0.0f, 21}, 0.5f, 0.0f, 3},   {{0.0f, 0, 1.0f, 0.0f, 22}, 0.0f, 0.7f, 0},
                        {{0.8f, 0, 0.9f, 0.0f, 23}, 0.3f, 0.4f, -1},  {{0.9f, 8, 1.0f, 0.0f, 24}, 1.5f, 0.0f, 5},
                        {{1.1f, 0, 1.0f, 0.05f, 25}, -0.4f, 0.2f, 2}, {{0.7f, 0, 1.0f, 0.0f, 26}, 0.0f, 0.0f, 4}};
  constexpr int kTokens = 14;
  std::vector<std::shared_ptr<GenerationRequest>> reqs;
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < std::size(kinds); ++i) {
    std::vector<int32_t> p;
    for (size_t t = 0; t < 3 + 4 * i; ++t) p.push_back(static_cast<int32_t>(5 + (t * 13 + i * 7) % 200));
    prompts.push_back(p);
    GenerationParams g;
    g.prompt = p;
    g.max_tokens = kTokens;
    g.sampling = kinds[i].sampling;
    g.presence_penalty = kinds[i].presence;
    g.frequency_penalty = kinds[i].frequency;
    g.top_logprobs = kinds[i].top_logprobs;
    reqs.push_back(std::make_shared<GenerationRequest>(g));
    ASSERT_EQ(s.submit(reqs.back()), Scheduler::Admission::accepted);
  }
  std::vector<std::vector<GeneratedToken>> all(std::size(kinds));
  for (size_t i = 0; i < std::size(kinds); ++i)  // all done first: the model serves one thread at a time
    while (!reqs[i]->wait_for(std::chrono::milliseconds(50), all[i])) {
    }
  for (size_t i = 0; i < std::size(kinds); ++i) {
    const std::vector<GeneratedToken>& got = all[i];
    ASSERT_EQ(got.size(), static_cast<size_t>(kTokens)) << "request " << i;
    // The reference: the whole row on the host, every token.
    const Kind& kd = kinds[i];
    SequenceState state = l.model.new_state();
    std::vector<float> logits = l.model.forward(state, prompts[i]);
    Sampler sampler(kd.sampling);
    std::map<int32_t, int> counts;
    for (int t = 0; t < kTokens; ++t) {
      std::vector<float> adjusted = logits;
      for (const auto& [id, n] : counts) adjusted[static_cast<size_t>(id)] -= kd.presence + kd.frequency * static_cast<float>(n);
      const int32_t id = sampler.sample(adjusted);
      ASSERT_EQ(got[t].id, id) << "request " << i << ", token " << t;
      if (kd.top_logprobs >= 0) {
        const float top = *std::max_element(logits.begin(), logits.end());
        double sum = 0.0;
        for (float v : logits) sum += std::exp(static_cast<double>(v) - top);
        const double log_z = top + std::log(sum);
        EXPECT_NEAR(got[t].logprob, logits[static_cast<size_t>(id)] - log_z, 1e-4) << "request " << i << ", token " << t;
        ASSERT_EQ(got[t].top.size(), static_cast<size_t>(kd.top_logprobs));
        std::vector<float> sorted = logits;
        std::sort(sorted.begin(), sorted.end(), std::greater<float>());
        for (int j = 0; j < kd.top_logprobs; ++j) {
          EXPECT_NEAR(got[t].top[j].second, sorted[static_cast<size_t>(j)] - log_z, 1e-4) << "request " << i;
          EXPECT_NEAR(logits[static_cast<size_t>(got[t].top[j].first)], sorted[static_cast<size_t>(j)], 1e-5);
        }
      } else {
        EXPECT_TRUE(got[t].top.empty());
      }
      ++counts[id];
      logits = l.model.forward(state, std::vector<int32_t>{id});
    }
  }
}

TEST(Scheduler, CancelFreesTheSlotAndCacheResumes) {
  Loaded l;
  SchedulerOptions o;
  o.parallel = 1;
  o.queue = 0;
  const std::vector<int32_t> follow_prompt{5, 6, 7, 8, 9, 10, 11};
  const std::vector<int32_t> follow_expected = greedy_alone(l.model, follow_prompt, 4);
  Scheduler s(l.model, o);
  GenerationParams g;
  g.prompt = {5, 6, 7, 8, 9};
  g.max_tokens = 1000;
  auto long_one = std::make_shared<GenerationRequest>(g);
  ASSERT_EQ(s.submit(long_one), Scheduler::Admission::accepted);
  auto refused = std::make_shared<GenerationRequest>(g);
  EXPECT_EQ(s.submit(refused), Scheduler::Admission::queue_full);
  std::vector<GeneratedToken> first;
  while (first.empty()) long_one->wait_for(std::chrono::milliseconds(50), first);  // prompt fed
  long_one->cancel();
  GenerationResult r;
  run_to_end(long_one, &r);
  EXPECT_EQ(r.finish_reason, "cancelled");
  // the prompt's snapshot was saved: the same prompt plus more resumes from it
  g.prompt = follow_prompt;
  g.max_tokens = 4;
  auto follow = std::make_shared<GenerationRequest>(g);
  ASSERT_EQ(s.submit(follow), Scheduler::Admission::accepted);
  EXPECT_EQ(run_to_end(follow, &r), follow_expected);
  EXPECT_EQ(r.cached_tokens, 5);
  // invalid input is refused, not crashed on
  g.prompt = {1, 100000};
  EXPECT_EQ(s.submit(std::make_shared<GenerationRequest>(g)), Scheduler::Admission::invalid);
  s.shutdown();
  EXPECT_EQ(s.submit(std::make_shared<GenerationRequest>(g)), Scheduler::Admission::invalid);
}

TEST(OpenAiRequest, ParsesAndRejects) {
  Loaded l;
  const TextModel text = TextModel::load(kModelDir, l.model.config());
  server::ServedModel m{"m", &text, 64, l.model.config().vocab_size};
  auto r = server::parse_completion_request(
      server::Endpoint::chat,
      R"({"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"temperature":0,"stop":"x"})", m);
  EXPECT_EQ(r.generation.max_tokens, 5);
  EXPECT_EQ(r.stop, std::vector<std::string>{"x"});
  EXPECT_FALSE(r.generation.prompt.empty());
  auto status = [&](const std::string& body) {
    try {
      server::parse_completion_request(server::Endpoint::completion, body, m);
      return 200;
    } catch (const server::ApiError& e) {
      return e.status();
    }
  };
  EXPECT_EQ(status(R"({"prompt":"hi"})"), 200);
  EXPECT_EQ(status(R"({"prompt":"hi","model":"other"})"), 404);
  EXPECT_EQ(status(R"({"prompt":"hi","max_tokens":0})"), 400);
  EXPECT_EQ(status(R"({"prompt":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,
                      31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,
                      61,62,63,64]})"), 400);
  EXPECT_EQ(status("{"), 400);
  EXPECT_EQ(status("[]"), 400);
  EXPECT_EQ(status(R"({"prompt":"hi","seed":18446744073709551615})"), 200);
}

}  // namespace
}  // namespace fh1
