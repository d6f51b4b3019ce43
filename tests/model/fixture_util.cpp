#include "model/fixture_util.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "io/json_file.h"
#include "io/npy.h"

namespace fh1::test {

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(std::string(FH1_FIXTURES_DIR) + "/models"))
    if (e.is_directory() && std::filesystem::exists(e.path() / "reference.json")) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

Fixture load_fixture(const std::string& name) {
  Fixture f;
  f.name = name;
  f.dir = std::string(FH1_FIXTURES_DIR) + "/models/" + name;
  const nlohmann::json ref = read_json_file(f.dir + "/reference.json");
  f.prompt_ids = ref.at("prompt_ids").get<std::vector<int32_t>>();
  f.greedy_prompt_ids = ref.at("greedy_prompt_ids").get<std::vector<int32_t>>();
  f.greedy_ids = ref.at("greedy_ids").get<std::vector<int32_t>>();
  f.greedy_top2_margin = ref.at("greedy_top2_margin").get<std::vector<double>>();
  f.logits = read_npy(f.dir + "/logits.npy").data;
  return f;
}

double relative_max_diff(const std::vector<float>& a, const std::vector<float>& ref) {
  if (a.size() != ref.size()) return INFINITY;
  double mx = 0.0, ss = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    mx = std::max(mx, std::abs(static_cast<double>(a[i]) - ref[i]));
    ss += static_cast<double>(ref[i]) * ref[i];
  }
  return mx / std::sqrt(ss / static_cast<double>(ref.size()));
}

}  // namespace fh1::test
