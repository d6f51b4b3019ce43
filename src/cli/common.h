// Pieces shared by the CLI subcommands.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace fh1::cli {

// "1,2,3" (spaces allowed) -> ids; throws fh1::Error naming the bad element.
std::vector<int32_t> parse_id_list(const std::string& text);

// Each subcommand registers itself on the app and returns the function that runs it.
using Runner = std::function<int()>;
Runner add_info_command(CLI::App& app);
Runner add_logits_command(CLI::App& app);
Runner add_generate_command(CLI::App& app);
Runner add_tokenize_commands(CLI::App& app);

}  // namespace fh1::cli
