#include "tools/cli_flags.h"

#include <cstdlib>
#include <vector>

namespace openmoe::tools {
namespace {
std::vector<std::string>& Args() {
  static std::vector<std::string> args;
  return args;
}
}  // namespace

void RecordArgs(int argc, char** argv) { Args().assign(argv + 1, argv + argc); }

bool FlagGiven(const std::string& name) {
  for (const std::string& arg : Args()) {
    if (arg == "--") break;
    if (arg.empty() || arg[0] != '-') continue;  // a flag's value, not a flag
    std::string a = arg;
    while (!a.empty() && a[0] == '-') a.erase(0, 1);
    if (a == name || a.rfind(name + "=", 0) == 0 || a == "no" + name) return true;
  }
  return false;
}

std::string ResolvePath(const std::string& path) {
  const char* cwd = std::getenv("BUILD_WORKING_DIRECTORY");  // set by `bazel run`
  if (path.empty() || path[0] == '/' || path == "-" || cwd == nullptr) return path;
  return std::string(cwd) + "/" + path;
}

std::string DefaultFinetuneDir() {
  const char* workspace = std::getenv("BUILD_WORKSPACE_DIRECTORY");  // set by `bazel run`
  return std::string(workspace ? workspace : ".") + "/outputs/default_finetune";
}

}  // namespace openmoe::tools
