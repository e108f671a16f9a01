// File: tools/cli_flags.h
// Small helpers shared by the command-line tools: which flags the user actually gave (Abseil
// 20220623 does not expose it), paths relative to where `bazel run` was started, and the folder
// of `//tools:train`'s default run (which `//tools:generate` uses by default).
#ifndef TOOLS_CLI_FLAGS_H_
#define TOOLS_CLI_FLAGS_H_

#include <string>

namespace openmoe::tools {

// Remembers argv as given; call before absl::ParseCommandLine.
void RecordArgs(int argc, char** argv);
// True if --name, -name, --name=..., or --noname was given (before a "--").
bool FlagGiven(const std::string& name);
// A relative path as seen from the directory `bazel run` was started in (BUILD_WORKING_DIRECTORY);
// absolute paths, "" and "-" (stdin) are returned unchanged.
std::string ResolvePath(const std::string& path);
// <workspace>/outputs/default_finetune (the workspace of `bazel run`, else the current folder).
std::string DefaultFinetuneDir();

}  // namespace openmoe::tools

#endif  // TOOLS_CLI_FLAGS_H_
