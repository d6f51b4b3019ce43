// Subcommands register themselves here (one file per subcommand under src/cli/cmd_*.cpp), so
// adding a command is adding a file.
#pragma once

#include <functional>
#include <vector>

#include <CLI/CLI.hpp>

namespace fh1::cli {

// Runs the subcommand if it was chosen and returns its exit code; returns -1 if not chosen.
using Runner = std::function<int()>;
using CommandFactory = Runner (*)(CLI::App& app);

std::vector<CommandFactory>& command_registry();

struct RegisterCommand {
  explicit RegisterCommand(CommandFactory f) { command_registry().push_back(f); }
};

}  // namespace fh1::cli
