#include "tools/launch_command.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace openmoe::tools {
namespace {

// Host names and addresses as mpirun's `--host name:N` can carry them: letters, digits, '.',
// '-', '_'. (A ':' would be read as the slot separator, so IPv6 literals are refused.)
bool ValidHostName(const std::string& name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](unsigned char ch) {
    return std::isalnum(ch) || ch == '.' || ch == '-' || ch == '_';
  });
}

}  // namespace

absl::StatusOr<std::vector<HostEntry>> ParseHostfile(const std::string& text, const std::string& source) {
  std::vector<HostEntry> hosts;
  std::set<std::string> seen;
  int64_t line_number = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line_number;
    const std::string where = absl::StrCat(source, ":", line_number, ": ");
    absl::string_view line = raw.substr(0, raw.find('#'));  // comments
    std::vector<absl::string_view> words = absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (words.empty()) continue;  // blank or comment-only
    HostEntry host;
    host.name = std::string(words[0]);
    if (!ValidHostName(host.name)) {
      return absl::InvalidArgumentError(absl::StrCat(where, "'", host.name, "' is not a host name (letters, digits, "
                                                     "'.', '-', '_'); expected `host` or `host slots=K`"));
    }
    if (words.size() > 2) {
      return absl::InvalidArgumentError(absl::StrCat(where, "too many words in '", absl::StripAsciiWhitespace(line),
                                                     "'; expected `host` or `host slots=K`"));
    }
    if (words.size() == 2) {
      absl::string_view slots = words[1];
      if (!absl::ConsumePrefix(&slots, "slots=") || !absl::SimpleAtoi(slots, &host.slots) || host.slots < 1) {
        return absl::InvalidArgumentError(absl::StrCat(where, "'", words[1], "' is not `slots=K` with K >= 1"));
      }
    }
    if (!seen.insert(host.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, "host '", host.name, "' is listed twice"));
    }
    hosts.push_back(host);
  }
  if (hosts.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": no hosts in the file"));
  return hosts;
}

absl::StatusOr<std::vector<HostEntry>> ReadHostfile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read hostfile '", path, "' (missing or unreadable)"));
  std::stringstream text;
  text << in.rdbuf();
  return ParseHostfile(text.str(), path);
}

int64_t DefaultOmpThreads(int64_t cores_per_host, int64_t nproc_per_node) {
  return std::max<int64_t>(1, cores_per_host / std::max<int64_t>(1, nproc_per_node));
}

absl::StatusOr<LaunchCommand> BuildLaunchCommand(const LaunchRequest& r) {
  if (r.nproc_per_node < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--nproc_per_node must be >= 1, got ", r.nproc_per_node));
  }
  if (r.program.empty()) return absl::InvalidArgumentError("no program to launch");
  std::vector<HostEntry> hosts = r.hosts;
  if (hosts.empty()) hosts.push_back({"localhost", 0});
  for (const HostEntry& h : hosts) {
    if (h.slots > 0 && h.slots < r.nproc_per_node) {
      return absl::InvalidArgumentError(absl::StrCat("host '", h.name, "' has slots=", h.slots, " in the hostfile, "
                                                     "fewer than --nproc_per_node ", r.nproc_per_node));
    }
  }
  LaunchCommand cmd;
  cmd.world_size = r.nproc_per_node * int64_t(hosts.size());

  if (r.running_as_root) {  // OpenMPI refuses root unless both are set (CI and containers run as root)
    cmd.env.push_back({"OMPI_ALLOW_RUN_AS_ROOT", "1"});
    cmd.env.push_back({"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"});
  }
  // Each rank is one Kokkos OpenMP process (one GPU per rank on CUDA builds): share the host's
  // cores between its ranks instead of every rank starting a thread per core.
  cmd.env.push_back({"OMP_NUM_THREADS", r.user_omp_num_threads.value_or(
                                            std::to_string(DefaultOmpThreads(r.cores_per_host, r.nproc_per_node)))});

  std::vector<std::string>& a = cmd.argv;
  a = {r.mpirun, "-np", std::to_string(cmd.world_size)};
  // `--host h1:N,h2:N` rather than `--map-by ppr:N:node`: the slot counts travel on the command
  // line, so the same line works with or without a hostfile or a resource manager, and OpenMPI
  // never refuses N > cores as oversubscription (explicit slots are taken as given), so no
  // --oversubscribe is needed. `--map-by slot` fills a host's N slots before the next one:
  // ranks r*N .. r*N+N-1 share host r, and the local rank (OMPI_COMM_WORLD_LOCAL_RANK) is the
  // GPU index.
  std::vector<std::string> host_slots;
  for (const HostEntry& h : hosts) host_slots.push_back(absl::StrCat(h.name, ":", r.nproc_per_node));
  a.insert(a.end(), {"--host", absl::StrJoin(host_slots, ","), "--map-by", "slot"});
  // No binding: OpenMPI binds each rank to one core when np <= 2 (to a socket otherwise), which
  // would squeeze a rank's OMP_NUM_THREADS OpenMP threads onto one core. The trainer sets
  // OMP_PROC_BIND=false itself; on GPU hosts the ranks' host threads are few and mostly wait.
  a.insert(a.end(), {"--bind-to", "none"});
  a.insert(a.end(), {"-x", "OMP_NUM_THREADS"});
  for (const std::string& name : r.forward_env) a.insert(a.end(), {"-x", name});
  a.push_back(r.program);
  a.insert(a.end(), r.program_args.begin(), r.program_args.end());
  return cmd;
}

std::string ShellQuote(const std::string& word) {
  const bool plain = !word.empty() && std::all_of(word.begin(), word.end(), [](unsigned char ch) {
    return std::isalnum(ch) || std::string("@%+=:,./-_").find(char(ch)) != std::string::npos;
  });
  if (plain) return word;
  std::string quoted = "'";
  for (char ch : word) quoted += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return quoted + "'";
}

std::string FormatCommandLine(const LaunchCommand& command) {
  std::vector<std::string> words;
  for (const auto& [name, value] : command.env) words.push_back(name + "=" + ShellQuote(value));
  for (const std::string& arg : command.argv) words.push_back(ShellQuote(arg));
  return absl::StrJoin(words, " ");
}

}  // namespace openmoe::tools
