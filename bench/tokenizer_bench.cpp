// Tokenizer throughput: encodes ~1 MB of mixed text (18 languages, code, LaTeX, numbers, emoji,
// whitespace runs, taken from the parity fixtures) and prints MB/s for encode and decode.
//
// usage: tokenizer-bench [MODEL_DIR] [MEGABYTES]
//   MODEL_DIR defaults to tests/fixtures/tokenizer/falcon_h1_like (any dir with tokenizer.json).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Concatenates the fixture texts, numbering each copy so that words differ between copies
// (keeps the word cache honest), until `bytes` is reached.
std::string build_corpus(size_t bytes) {
  const std::filesystem::path expected =
      std::filesystem::path(FH1_TOKENIZER_FIXTURES) / "falcon_h1_like" / "expected.json";
  std::ifstream in(expected);
  if (!in) throw fh1::Error("cannot open " + expected.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  const auto doc = nlohmann::json::parse(buffer.str());
  std::string corpus;
  for (size_t copy = 0; corpus.size() < bytes; ++copy) {
    for (const auto& c : doc["cases"]) {
      if (!c.contains("text")) continue;
      corpus += c["text"].get<std::string>();
      corpus += " v" + std::to_string(copy) + "x" + std::to_string(corpus.size() % 977) + "\n";
    }
  }
  corpus.resize(bytes);  // may cut a character: the tokenizer must cope with that too
  return corpus;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::filesystem::path dir =
        argc > 1 ? std::filesystem::path(argv[1])
                 : std::filesystem::path(FH1_TOKENIZER_FIXTURES) / "falcon_h1_like";
    const double megabytes = argc > 2 ? std::atof(argv[2]) : 1.0;
    const std::string corpus = build_corpus(static_cast<size_t>(megabytes * 1024 * 1024));
    const double mb = static_cast<double>(corpus.size()) / (1024.0 * 1024.0);

    auto t0 = std::chrono::steady_clock::now();
    const fh1::Tokenizer tok = fh1::Tokenizer::from_dir(dir);
    const double load_s = seconds_since(t0);

    t0 = std::chrono::steady_clock::now();
    const auto ids = tok.encode(corpus, false);  // cold: empty word cache
    const double cold_s = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    const auto ids_warm = tok.encode(corpus, false);
    const double warm_s = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    const std::string text = tok.decode(ids);
    const double decode_s = seconds_since(t0);

    std::printf("tokenizer: %s (vocab %zu), load %.3f s\n", dir.string().c_str(), tok.vocab_size(), load_s);
    std::printf("input: %.2f MB -> %zu tokens (%.2f bytes/token)\n", mb, ids.size(),
                static_cast<double>(corpus.size()) / static_cast<double>(ids.size()));
    std::printf("encode (cold cache): %.3f s = %.2f MB/s\n", cold_s, mb / cold_s);
    std::printf("encode (warm cache): %.3f s = %.2f MB/s\n", warm_s, mb / warm_s);
    std::printf("decode:              %.3f s = %.2f MB/s\n", decode_s, mb / decode_s);
    if (ids != ids_warm) {
      std::fprintf(stderr, "error: warm and cold encodings differ\n");
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
