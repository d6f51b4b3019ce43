#include "cli/model_options.h"

#include <chrono>
#include <cstdio>
#include <string>

#include "util/error.h"
#ifdef FALCON_H1_HAVE_CUDA
#include "kernels/cuda/cuda_kernels.h"
#endif

namespace fh1::cli {

DType kv_cache_dtype_from_name(const std::string& name) {
  if (name == "f32") return DType::F32;
  if (name == "bf16") return DType::BF16;
  if (name == "q8") return DType::I8;
  throw Error("--kv-cache: expected auto, f32, bf16 or q8, found " + name);
}

std::unique_ptr<Kernels> make_kernels(const std::string& device, ThreadPool& pool, const std::string& kv_cache) {
  const DType kv_type = kv_cache == "auto" ? DType::UNKNOWN : kv_cache_dtype_from_name(kv_cache);
  const auto with_kv = [&](std::unique_ptr<Kernels> k) {
    if (kv_type != DType::UNKNOWN && !k->set_kv_cache_dtype(kv_type))
      throw Error("--kv-cache " + kv_cache + ": the " + k->name() + " backend cannot keep its KV cache in that type");
    return k;
  };
  if (device == "cpu") return with_kv(make_cpu_kernels(pool));
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
#ifdef FALCON_H1_HAVE_CUDA
    int index = 0;
    if (device.size() > 5) {
      try {
        index = std::stoi(device.substr(5));
      } catch (const std::exception&) {
        throw Error("--device: expected cuda:N with N a GPU index, found " + device);
      }
    }
    return with_kv(make_cuda_kernels(index));
#else
    throw Error("--device " + device + ": this build has no CUDA backend (configure with -DFALCON_H1_CUDA=ON)");
#endif
  }
  throw Error("--device: expected cpu or cuda[:N], found " + device);
}

LoadedModel LoadedModel::load(const ModelOptions& opt) {
  LoadedModel m;
  m.pool = std::make_unique<ThreadPool>(opt.threads);
  m.kernels = make_kernels(opt.device, *m.pool, opt.kv_cache);
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
