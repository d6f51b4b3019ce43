// A chat session that keeps its state between turns gives the replies a fresh computation over
// the whole conversation gives.
#include <gtest/gtest.h>

#include <filesystem>

#include "io/temp_dir.h"
#include "model/fixture_util.h"
#include "runtime/chat_session.h"
#include "util/error.h"

namespace fh1::test {
namespace {

// A text model: a fixture checkpoint (vocab 300) with a byte-level BPE tokenizer of 300 tokens.
struct TextFixture {
  TempDir dir;
  TextFixture() {
    const std::string fx = FH1_FIXTURES_DIR;
    for (const auto& e : std::filesystem::directory_iterator(fx + "/models/norm_gate_after_g2_untied_bias"))
      std::filesystem::copy(e.path(), dir.path / e.path().filename());
    std::filesystem::copy(fx + "/tokenizer/bytelevel_digits_punct_300/tokenizer.json", dir.path / "tokenizer.json");
  }
};

std::vector<int32_t> fresh_reply(const Model& model, const TextModel& text, const nlohmann::ordered_json& messages,
                                 const GenerateOptions& opt) {
  SequenceState s = model.new_state();
  GenerateOptions o = opt;
  o.eos_ids = text.eos_ids();
  return generate(model, s, text.encode_chat(messages, true), o).ids;
}

TEST(ChatSession, StateKeptBetweenTurnsEqualsRecomputation) {
  TextFixture fx;
  Backend be;
  const Model model = Model::load(fx.dir.path, *be.kernels);
  const TextModel text = TextModel::load(fx.dir.path, model.config());
  GenerateOptions opt;
  opt.max_new_tokens = 12;
  opt.prefill_chunk = 16;
  ChatSession session(model, text, opt, "You are terse.");

  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  messages.push_back({{"role", "system"}, {"content", "You are terse."}});
  for (const char* user : {"Hello there!", "What is 12 + 30?", "Thanks."}) {
    std::string streamed;
    const ChatReply r = session.reply(user, [&](const std::string& piece) { streamed += piece; });
    EXPECT_EQ(streamed, r.text);
    messages.push_back({{"role", "user"}, {"content", user}});
    EXPECT_EQ(r.result.ids, fresh_reply(model, text, messages, opt)) << "turn: " << user;
    messages.push_back({{"role", "assistant"}, {"content", r.text}});
    if (messages.size() > 3) {
      EXPECT_GT(r.reused_tokens, 0) << "later turns must reuse the state";
    }
  }
  session.reset();
  EXPECT_EQ(session.context_tokens(), 0);
}

TEST(ChatSession, StopEndsTheReplyAndTheConversationGoesOn) {
  TextFixture fx;
  Backend be;
  const Model model = Model::load(fx.dir.path, *be.kernels);
  const TextModel text = TextModel::load(fx.dir.path, model.config());
  GenerateOptions opt;
  opt.max_new_tokens = 50;
  ChatSession session(model, text, opt);
  int calls = 0;
  const ChatReply r = session.reply("Tell me a long story.", nullptr, [&] { return ++calls >= 3; });
  EXPECT_EQ(r.result.finish_reason, "cancelled");
  EXPECT_EQ(r.result.ids.size(), 3u);
  const ChatReply next = session.reply("Go on.", nullptr);
  EXPECT_FALSE(next.result.ids.empty());
}

TEST(ChatSession, ConversationOverTheContextIsAClearError) {
  TextFixture fx;
  Backend be;
  const Model model = Model::load(fx.dir.path, *be.kernels);
  const TextModel text = TextModel::load(fx.dir.path, model.config());
  GenerateOptions opt;
  opt.max_new_tokens = 4;
  opt.context_length = 80;
  ChatSession session(model, text, opt);
  EXPECT_THROW(session.reply(std::string(300, 'x'), nullptr), Error);
  EXPECT_NO_THROW(session.reply("hi", nullptr));  // still usable
}

TEST(TextModel, NoTokenizerIsAClearError) {
  const std::string dir = std::string(FH1_FIXTURES_DIR) + "/models/norm_off_g1_tied";
  const ModelConfig c = ModelConfig::from_dir(dir);
  try {
    TextModel::load(dir, c);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos);
  }
}

}  // namespace
}  // namespace fh1::test
