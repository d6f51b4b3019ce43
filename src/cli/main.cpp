// falcon-h1: the command-line entry point. One file per subcommand.
#include <cstdio>
#include <exception>
#include <map>

#include "cli/common.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

int main(int argc, char** argv) {
  CLI::App app{"falcon-h1: run Falcon-H1 hybrid attention + Mamba-2 models on your own machine"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "falcon-h1 0.1.0");
  std::vector<fh1::cli::Runner> runners;
  for (auto factory : fh1::cli::command_registry()) runners.push_back(factory(app));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& run : runners) {
      const int rc = run();
      if (rc >= 0) return rc;  // the runner whose subcommand was chosen
    }
    return 0;
  } catch (const fh1::Error& e) {
    // Messages may quote the input they reject (a parser's "last read: ..."): never raw bytes.
    std::fprintf(stderr, "error: %s\n", fh1::unicode::to_valid_utf8(e.what()).c_str());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", fh1::unicode::to_valid_utf8(e.what()).c_str());
    return 1;
  }
}
