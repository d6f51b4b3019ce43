// Renders every fixture made by tests/python/make_chat_template_fixtures.py (Python's jinja2,
// configured like transformers) and compares the output byte for byte.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "util/error.h"

namespace {

using nlohmann::ordered_json;  // keeps tool schema keys in file order, as Python dicts do

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(FH1_CHAT_FIXTURE_DIR)) {
    if (entry.path().extension() == ".json") names.push_back(entry.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

ordered_json load_fixture(const std::string& name) {
  std::ifstream in(std::string(FH1_CHAT_FIXTURE_DIR) + "/" + name + ".json");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ordered_json::parse(buffer.str());
}

class ChatTemplateFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatTemplateFixture, MatchesPythonJinja) {
  ordered_json fixture = load_fixture(GetParam());
  fh1::ChatTemplate tmpl(fixture["template"].get<std::string>());
  const std::string bos = fixture["bos_token"], eos = fixture["eos_token"];
  ASSERT_FALSE(fixture["cases"].empty());
  for (const ordered_json& c : fixture["cases"]) {
    SCOPED_TRACE(GetParam() + "/" + c["name"].get<std::string>());
    if (c.contains("expected_error")) {
      try {
        tmpl.render(c["messages"], c["add_generation_prompt"].get<bool>(), bos, eos, c["extra"]);
        ADD_FAILURE() << "expected an error: " << c["expected_error"];
      } catch (const fh1::Error& e) {
        if (c["error_type"] == "TemplateError") {  // raise_exception: the message must survive
          EXPECT_NE(std::string(e.what()).find(c["expected_error"].get<std::string>()), std::string::npos)
              << e.what();
        }
      }
      continue;
    }
    std::string got;
    try {
      got = tmpl.render(c["messages"], c["add_generation_prompt"].get<bool>(), bos, eos, c["extra"]);
    } catch (const fh1::Error& e) {
      ADD_FAILURE() << "unexpected error: " << e.what();
      continue;
    }
    EXPECT_EQ(got, c["expected"].get<std::string>());
  }
}

INSTANTIATE_TEST_SUITE_P(Templates, ChatTemplateFixture, ::testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });

TEST(ChatTemplateFixture, PlainJsonSortsKeysButRendersTheSameForMessages) {
  // nlohmann::json (sorted keys) gives the same prompt when only role/content are read.
  nlohmann::json messages = nlohmann::json::parse(R"([{"role":"user","content":"Hi"}])");
  fh1::ChatTemplate tmpl(fh1::chatml_template());
  EXPECT_EQ(tmpl.render(messages, true, "", ""), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateFixture, ChatMessagesConvert) {
  fh1::ChatTemplate tmpl(fh1::chatml_template());
  auto messages = fh1::to_json_messages({{"system", "S"}, {"user", "U"}});
  EXPECT_EQ(tmpl.render(messages, false, "", ""), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
}

}  // namespace
