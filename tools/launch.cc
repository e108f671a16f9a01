// launch: starts a program (by default //tools:train) on nproc_per_node ranks per host through
// OpenMPI's mpirun, as upstream's `colossalai run` starts train.py. It builds the mpirun command
// (tools/launch_command.h) and replaces itself with mpirun (execvp), so signals reach mpirun and
// mpirun's exit status is the launcher's.
//
//   bazel run //tools:launch -- --nproc_per_node 8 -- --model_name 8b --dataset d.safetensors
//   bazel run //tools:launch -- --nproc_per_node 8 --hostfile hosts.txt --dry_run -- --lr 1e-5
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "tools/cli_flags.h"
#include "tools/launch_command.h"

ABSL_FLAG(int64_t, nproc_per_node, 0, "Required. Ranks per host (one per GPU), >= 1. World size = this x hosts.");
ABSL_FLAG(std::string, hostfile, "", "Hosts, one per line: `host` or `host slots=K` (K >= nproc_per_node); `#` "
          "comments, blank lines. Default: this machine only. Every host needs the program at the same path.");
ABSL_FLAG(std::string, mpirun, "mpirun", "The mpirun to run (path or name on PATH; OpenMPI).");
ABSL_FLAG(bool, dry_run, false, "Print the command (one shell-quoted line) and exit 0 instead of running it.");
ABSL_FLAG(std::string, program, "", "What every rank runs (default: the //tools:train binary built with this "
          "launcher). A name without '/' is looked up on PATH by mpirun.");

namespace {

constexpr char kWorkspace[] = "openmoe_kokkos";  // WORKSPACE's name: the runfiles tree's top folder

int Fail(const std::string& message) {
  std::fprintf(stderr, "launch: %s\n", message.c_str());
  return 2;
}

bool IsExecutableFile(const std::filesystem::path& p) {
  std::error_code ec;
  return std::filesystem::is_regular_file(p, ec) && access(p.c_str(), X_OK) == 0;
}

// //tools:train, a data dependency of this binary: in the runfiles tree (`bazel run`, `bazel
// test`), else next to this binary (bazel-bin/tools/, or a staged copy of both).
std::optional<std::string> FindTrainBinary() {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::vector<std::filesystem::path> candidates;
  if (const char* runfiles = std::getenv("RUNFILES_DIR")) {
    candidates.push_back(std::filesystem::path(runfiles) / kWorkspace / "tools/train");
  }
  if (!ec) {
    candidates.push_back(std::filesystem::path(self.string() + ".runfiles") / kWorkspace / "tools/train");
    candidates.push_back(self.parent_path() / "train");
  }
  for (const std::filesystem::path& p : candidates) {
    if (IsExecutableFile(p)) return std::filesystem::absolute(p, ec).string();
  }
  return std::nullopt;
}

// CPUs this process may run on (taskset / cgroup cpusets), the base of OMP_NUM_THREADS.
int64_t UsableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 ? online : 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Runs //tools:train (or --program) on --nproc_per_node ranks per host with OpenMPI's mpirun: the C++\n"
      "equivalent of `colossalai run --nproc_per_node N train.py ...`. Everything after `--` goes to the\n"
      "program unchanged.\n"
      "  launch --nproc_per_node N [--hostfile F] [--mpirun PATH] [--program P] [--dry_run] [-- program flags]\n"
      "Example (8 GPUs on one host; then 2 hosts of 8 from a hostfile, printing the command only):\n"
      "  bazel run //tools:launch -- --nproc_per_node 8 -- --model_name 8b --dataset tokens.safetensors\n"
      "  bazel run //tools:launch -- --nproc_per_node 8 --hostfile hosts.txt --dry_run -- --lr 1e-5\n"
      "The command: mpirun -np W --host h1:N,h2:N --map-by slot --bind-to none -x OMP_NUM_THREADS ... PROGRAM ARGS\n"
      "(W = N x hosts; ranks r*N..r*N+N-1 on host r). OMP_NUM_THREADS defaults to the cores of this host / N\n"
      "(at least 1) unless set; as root, OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)=1 are set for mpirun.\n"
      "The launcher execs mpirun: signals and the exit status pass through.");
  // The launcher's own flags come before `--`, the program's after it, untouched.
  int own = argc;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--") == 0) {
      own = i;
      break;
    }
  }
  std::vector<std::string> program_args(argv + std::min(argc, own + 1), argv + argc);
  openmoe::tools::RecordArgs(argc, argv);
  const std::vector<char*> positional = absl::ParseCommandLine(own, argv);
  if (positional.size() > 1) {
    return Fail(std::string("unexpected argument '") + positional[1] + "' before `--` (program flags go after `--`)");
  }

  openmoe::tools::LaunchRequest request;
  request.nproc_per_node = absl::GetFlag(FLAGS_nproc_per_node);
  if (!openmoe::tools::FlagGiven("nproc_per_node")) {
    return Fail("--nproc_per_node is required (ranks per host, e.g. the number of GPUs); see --help");
  }
  if (const std::string hostfile = absl::GetFlag(FLAGS_hostfile); !hostfile.empty()) {
    absl::StatusOr<std::vector<openmoe::tools::HostEntry>> hosts =
        openmoe::tools::ReadHostfile(openmoe::tools::ResolvePath(hostfile));
    if (!hosts.ok()) return Fail(std::string(hosts.status().message()));
    request.hosts = *hosts;
  }
  request.mpirun = absl::GetFlag(FLAGS_mpirun);
  if (request.mpirun.find('/') != std::string::npos) request.mpirun = openmoe::tools::ResolvePath(request.mpirun);
  request.program = absl::GetFlag(FLAGS_program);
  if (request.program.empty()) {
    std::optional<std::string> train = FindTrainBinary();
    if (!train) return Fail("cannot find the //tools:train binary (runfiles or next to launch); pass --program");
    request.program = *train;
  } else if (request.program.find('/') != std::string::npos) {
    request.program = openmoe::tools::ResolvePath(request.program);  // relative to where `bazel run` started
  }
  request.program_args = program_args;
  request.cores_per_host = UsableCores();
  if (const char* omp = std::getenv("OMP_NUM_THREADS"); omp != nullptr && *omp != '\0') request.user_omp_num_threads = omp;
  request.running_as_root = geteuid() == 0;
  // `bazel run` tells the trainer where relative paths and the workspace are; remote ranks need it too.
  for (const char* name : {"BUILD_WORKING_DIRECTORY", "BUILD_WORKSPACE_DIRECTORY"}) {
    if (std::getenv(name) != nullptr) request.forward_env.push_back(name);
  }

  absl::StatusOr<openmoe::tools::LaunchCommand> command = openmoe::tools::BuildLaunchCommand(request);
  if (!command.ok()) return Fail(std::string(command.status().message()));
  if (absl::GetFlag(FLAGS_dry_run)) {
    std::printf("%s\n", openmoe::tools::FormatCommandLine(*command).c_str());
    return 0;
  }
  if (request.hosts.empty() && request.nproc_per_node > request.cores_per_host) {
    std::fprintf(stderr, "launch: note: %lld ranks share %lld cores on this host\n",
                 (long long)request.nproc_per_node, (long long)request.cores_per_host);
  }
  for (const auto& [name, value] : command->env) setenv(name.c_str(), value.c_str(), /*overwrite=*/1);
  std::vector<char*> exec_argv;
  for (std::string& arg : command->argv) exec_argv.push_back(arg.data());
  exec_argv.push_back(nullptr);
  std::fflush(stdout);
  execvp(exec_argv[0], exec_argv.data());
  std::fprintf(stderr, "launch: cannot run '%s': %s (install OpenMPI's mpirun, e.g. apt-get install openmpi-bin, "
               "or pass --mpirun PATH)\n", exec_argv[0], std::strerror(errno));
  return 127;
}
