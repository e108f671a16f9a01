#include "tools/launch_command.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace openmoe::tools {
namespace {

using Args = std::vector<std::string>;

LaunchRequest Request(int64_t nproc_per_node) {
  LaunchRequest r;
  r.nproc_per_node = nproc_per_node;
  r.program = "/bin/train";
  r.cores_per_host = 16;
  return r;
}

TEST(ParseHostfile, HostsSlotsCommentsAndBlankLines) {
  const std::string text =
      "# the cluster\n"
      "\n"
      "node-a\n"
      "   node-b.example.org   slots=8   # trailing comment\n"
      "\t10.0.0.3 slots=4\r\n"
      "   \n";
  absl::StatusOr<std::vector<HostEntry>> hosts = ParseHostfile(text, "hosts.txt");
  ASSERT_TRUE(hosts.ok()) << hosts.status();
  ASSERT_EQ(hosts->size(), 3u);
  EXPECT_EQ((*hosts)[0].name, "node-a");
  EXPECT_EQ((*hosts)[0].slots, 0);
  EXPECT_EQ((*hosts)[1].name, "node-b.example.org");
  EXPECT_EQ((*hosts)[1].slots, 8);
  EXPECT_EQ((*hosts)[2].name, "10.0.0.3");
  EXPECT_EQ((*hosts)[2].slots, 4);
}

// Each malformed line is reported with the file and its 1-based line number.
TEST(ParseHostfile, MalformedLinesNameFileAndLine) {
  const struct {
    std::string text, message;
  } cases[] = {
      {"a\nb slots=x\n", "hosts.txt:2: 'slots=x' is not `slots=K`"},
      {"a\n\nb slots=0\n", "hosts.txt:3: 'slots=0' is not `slots=K`"},
      {"a slots=2 extra\n", "hosts.txt:1: too many words"},
      {"# c\nb maxslots=2\n", "hosts.txt:2: 'maxslots=2' is not `slots=K`"},
      {"a\nfe80::1\n", "hosts.txt:2: 'fe80::1' is not a host name"},
      {"a\nb\na slots=2\n", "hosts.txt:3: host 'a' is listed twice"},
      {"# only comments\n\n", "hosts.txt: no hosts"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<std::vector<HostEntry>> hosts = ParseHostfile(c.text, "hosts.txt");
    ASSERT_FALSE(hosts.ok()) << c.text;
    EXPECT_NE(std::string(hosts.status().message()).find(c.message), std::string::npos)
        << "message: " << hosts.status().message() << "\nwanted: " << c.message;
  }
}

TEST(ReadHostfile, MissingFileIsNamed) {
  absl::StatusOr<std::vector<HostEntry>> hosts = ReadHostfile("/nonexistent/hosts.txt");
  ASSERT_FALSE(hosts.ok());
  EXPECT_NE(std::string(hosts.status().message()).find("/nonexistent/hosts.txt"), std::string::npos);
}

TEST(BuildLaunchCommand, LocalhostOnly) {
  LaunchRequest r = Request(2);
  r.program_args = {"--model_name", "8b", "--lr", "1e-5"};
  absl::StatusOr<LaunchCommand> cmd = BuildLaunchCommand(r);
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->world_size, 2);
  EXPECT_EQ(cmd->argv, (Args{"mpirun", "-np", "2", "--host", "localhost:2", "--map-by", "slot", "--bind-to", "none",
                             "-x", "OMP_NUM_THREADS", "/bin/train", "--model_name", "8b", "--lr", "1e-5"}));
  // 16 cores shared by 2 ranks; not root: no OMPI_ALLOW_RUN_AS_ROOT.
  ASSERT_EQ(cmd->env.size(), 1u);
  EXPECT_EQ(cmd->env[0], (std::pair<std::string, std::string>{"OMP_NUM_THREADS", "8"}));
}

TEST(BuildLaunchCommand, HostsMultiplyTheWorldAndEachGetsNSlots) {
  LaunchRequest r = Request(4);
  r.hosts = {{"a", 0}, {"b", 8}, {"c", 4}};
  r.mpirun = "/opt/ompi/bin/mpirun";
  r.forward_env = {"BUILD_WORKING_DIRECTORY"};
  absl::StatusOr<LaunchCommand> cmd = BuildLaunchCommand(r);
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->world_size, 12);
  EXPECT_EQ(cmd->argv, (Args{"/opt/ompi/bin/mpirun", "-np", "12", "--host", "a:4,b:4,c:4", "--map-by", "slot",
                             "--bind-to", "none", "-x", "OMP_NUM_THREADS", "-x", "BUILD_WORKING_DIRECTORY",
                             "/bin/train"}));
}

TEST(BuildLaunchCommand, RootUserOmpAndDefaultThreads) {
  LaunchRequest r = Request(3);
  r.running_as_root = true;
  absl::StatusOr<LaunchCommand> cmd = BuildLaunchCommand(r);
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->env, (std::vector<std::pair<std::string, std::string>>{
                          {"OMPI_ALLOW_RUN_AS_ROOT", "1"}, {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"},
                          {"OMP_NUM_THREADS", "5"}}));  // 16 / 3, rounded down
  r.user_omp_num_threads = "7";  // the caller's value wins
  cmd = BuildLaunchCommand(r);
  ASSERT_TRUE(cmd.ok());
  EXPECT_EQ(cmd->env.back(), (std::pair<std::string, std::string>{"OMP_NUM_THREADS", "7"}));
  EXPECT_EQ(DefaultOmpThreads(2, 4), 1);  // more ranks than cores: still one thread each
  EXPECT_EQ(DefaultOmpThreads(2, 2), 1);
  EXPECT_EQ(DefaultOmpThreads(128, 8), 16);
}

TEST(BuildLaunchCommand, InvalidRequests) {
  EXPECT_FALSE(BuildLaunchCommand(Request(0)).ok());
  EXPECT_FALSE(BuildLaunchCommand(Request(-2)).ok());
  LaunchRequest no_program = Request(1);
  no_program.program.clear();
  EXPECT_FALSE(BuildLaunchCommand(no_program).ok());
  LaunchRequest few_slots = Request(8);
  few_slots.hosts = {{"a", 8}, {"b", 4}};
  absl::StatusOr<LaunchCommand> cmd = BuildLaunchCommand(few_slots);
  ASSERT_FALSE(cmd.ok());
  EXPECT_NE(std::string(cmd.status().message()).find("host 'b' has slots=4"), std::string::npos);
}

TEST(FormatCommandLine, OneShellQuotedLine) {
  EXPECT_EQ(ShellQuote("plain-word_1.5,a:b/c=d"), "plain-word_1.5,a:b/c=d");
  EXPECT_EQ(ShellQuote(""), "''");
  EXPECT_EQ(ShellQuote("two words"), "'two words'");
  EXPECT_EQ(ShellQuote("it's $HOME"), "'it'\\''s $HOME'");
  LaunchRequest r = Request(1);
  r.running_as_root = true;
  r.program_args = {"--prompt", "it's", ""};
  absl::StatusOr<LaunchCommand> cmd = BuildLaunchCommand(r);
  ASSERT_TRUE(cmd.ok());
  EXPECT_EQ(FormatCommandLine(*cmd),
            "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=16 mpirun -np 1 "
            "--host localhost:1 --map-by slot --bind-to none -x OMP_NUM_THREADS /bin/train --prompt 'it'\\''s' ''");
}

}  // namespace
}  // namespace openmoe::tools
