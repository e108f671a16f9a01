// File: tools/launch_command.h
// The pieces of //tools:launch (upstream's `colossalai run`) that need no process: reading a
// hostfile and building the mpirun command line that starts nproc_per_node copies of a program
// on each host. launch.cc adds the flags, the environment it reads, and the exec.
//
//   OPENMOE_ASSIGN_OR_RETURN(std::vector<HostEntry> hosts, ReadHostfile("hosts.txt"));
//   LaunchRequest r;  r.nproc_per_node = 8;  r.hosts = hosts;  r.program = "/path/train";  ...
//   OPENMOE_ASSIGN_OR_RETURN(LaunchCommand cmd, BuildLaunchCommand(r));
//   FormatCommandLine(cmd)   // "OMP_NUM_THREADS=2 mpirun -np 16 --host a:8,b:8 ... /path/train ..."
#ifndef TOOLS_LAUNCH_COMMAND_H_
#define TOOLS_LAUNCH_COMMAND_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace openmoe::tools {

// One line of a hostfile: `host` or `host slots=K`.
struct HostEntry {
  std::string name;
  int64_t slots = 0;  // 0: not given
};

// Hostfile text: one host per line, `host` or `host slots=K`; `#` starts a comment (whole line
// or after the entry); blank lines are skipped. A host may appear once. Errors name `source`
// and the 1-based line, e.g. "hosts.txt:3: ...".
absl::StatusOr<std::vector<HostEntry>> ParseHostfile(const std::string& text, const std::string& source);
// The same from a file; a missing or unreadable file is an error naming it.
absl::StatusOr<std::vector<HostEntry>> ReadHostfile(const std::string& path);

struct LaunchRequest {
  int64_t nproc_per_node = 0;      // ranks per host, >= 1
  std::vector<HostEntry> hosts;    // empty: this machine only (localhost)
  std::string mpirun = "mpirun";   // path or name on PATH
  std::string program;             // what every rank runs
  std::vector<std::string> program_args;  // passed unchanged
  int64_t cores_per_host = 1;      // CPUs this process may use; hosts are assumed alike
  std::optional<std::string> user_omp_num_threads;  // OMP_NUM_THREADS of the caller's environment
  bool running_as_root = false;    // geteuid() == 0
  // Variables of the caller's environment that every rank needs, also on other hosts (local
  // ranks inherit mpirun's environment anyway; remote ones only get what `-x` names).
  std::vector<std::string> forward_env;
};

struct LaunchCommand {
  // Set in mpirun's own environment before exec (mpirun reads the OMPI_ALLOW_RUN_AS_ROOT pair
  // itself; OMP_NUM_THREADS reaches the ranks through `-x`).
  std::vector<std::pair<std::string, std::string>> env;
  std::vector<std::string> argv;  // argv[0] = the mpirun to exec
  int64_t world_size = 0;
};

// OMP_NUM_THREADS a rank gets unless the caller set it: the host's cores shared by its ranks,
// at least 1.
int64_t DefaultOmpThreads(int64_t cores_per_host, int64_t nproc_per_node);

// The mpirun command for `request`; invalid requests (nproc_per_node < 1, no program, a host
// whose slots=K is smaller than nproc_per_node) are errors saying which.
absl::StatusOr<LaunchCommand> BuildLaunchCommand(const LaunchRequest& request);

// `word` quoted for a POSIX shell where needed ('...' with ' as '\''); plain words unchanged.
std::string ShellQuote(const std::string& word);
// The command as one shell line: `NAME=value ... mpirun args...`, every word quoted.
std::string FormatCommandLine(const LaunchCommand& command);

}  // namespace openmoe::tools

#endif  // TOOLS_LAUNCH_COMMAND_H_
