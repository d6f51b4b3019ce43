// Pieces shared by the CLI subcommands.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cli/registry.h"

namespace fh1::cli {

// "1,2,3" (spaces allowed) -> ids; throws fh1::Error naming the bad element.
std::vector<int32_t> parse_id_list(const std::string& text);


}  // namespace fh1::cli
