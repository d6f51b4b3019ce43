// falcon-h1 logits: float32 logits of every position of a token sequence, as a .npy file.
#include <cstdio>

#include "cli/common.h"
#include "cli/model_options.h"
#include "io/npy.h"
#include "util/error.h"

namespace fh1::cli {

namespace {

Runner add_logits_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string ids, out;
    int64_t chunk = 512;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("logits", "Write the logits of every position of --ids to a .npy file");
  opt->model.add_to(*cmd);
  cmd->add_option("--ids", opt->ids, "token ids, e.g. 1,2,3")->required();
  cmd->add_option("--out", opt->out, "output .npy file: float32 [n, vocab]")->required();
  cmd->add_option("--chunk", opt->chunk, "tokens per forward call")->check(CLI::PositiveNumber);
  return [cmd, opt]() -> int {
    if (!cmd->parsed()) return -1;
    const std::vector<int32_t> ids = parse_id_list(opt->ids);
    if (ids.empty()) throw Error("--ids: no token ids given");
    LoadedModel lm = LoadedModel::load(opt->model);
    const int64_t V = lm.model->config().vocab_size;
    SequenceState state = lm.model->new_state(static_cast<int64_t>(ids.size()));
    std::vector<float> all;
    all.reserve(ids.size() * static_cast<size_t>(V));
    for (size_t i = 0; i < ids.size(); i += static_cast<size_t>(opt->chunk)) {
      const size_t n = std::min(ids.size() - i, static_cast<size_t>(opt->chunk));
      const std::vector<float> part = lm.model->forward(state, std::span<const int32_t>(ids).subspan(i, n), true);
      all.insert(all.end(), part.begin(), part.end());
    }
    write_npy_f32(opt->out, {static_cast<int64_t>(ids.size()), V}, all.data());
    std::fprintf(stderr, "wrote %s: [%zu, %lld] float32\n", opt->out.c_str(), ids.size(), static_cast<long long>(V));
    return 0;
  };
}

const RegisterCommand registered(add_logits_command);

}  // namespace
}  // namespace fh1::cli
