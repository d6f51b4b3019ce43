#include "cli/model_options.h"

#include <chrono>
#include <cstdio>

namespace fh1::cli {

LoadedModel LoadedModel::load(const ModelOptions& opt) {
  LoadedModel m;
  m.pool = std::make_unique<ThreadPool>(opt.threads);
  m.kernels = make_cpu_kernels(*m.pool);
  const auto t0 = std::chrono::steady_clock::now();
  m.model = std::make_unique<Model>(Model::load(opt.dir, *m.kernels));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!opt.quiet)
    std::fprintf(stderr, "loaded %s: %.1fM parameters, %.1f MB of weights, %d threads, %.2f s\n", opt.dir.c_str(),
                 static_cast<double>(m.model->parameter_count()) / 1e6,
                 static_cast<double>(m.model->weight_bytes()) / 1e6, m.pool->size(), s);
  return m;
}

}  // namespace fh1::cli
