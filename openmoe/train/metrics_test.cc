// Metrics sinks: metrics.jsonl lines (keys, order, fp16 fields, null for a non-finite loss), a
// resumed run's file (lines after the checkpoint dropped, new ones appended), and the progress
// printer's bar and lines.
#include "openmoe/train/metrics.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace openmoe::train {
namespace {

StepMetrics At(int64_t step, double loss) {
  StepMetrics m;
  m.step = step, m.epoch = (step - 1) / 10, m.total_steps = 20;
  m.loss.total = loss, m.loss.lm = loss - 0.5, m.loss.router_aux = 0.25, m.loss.router_z = 0.25;
  m.lr = 1e-3, m.grad_norm = 2.5, m.tokens_per_s = 100, m.eta_seconds = 61;
  return m;
}

std::vector<std::string> Lines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(JsonlMetricsSink, WritesOneOrderedLinePerStep) {
  const std::string path = ::testing::TempDir() + "/metrics_lines.jsonl";
  std::ofstream(path) << "an older run's line\n";
  {
    absl::StatusOr<std::unique_ptr<JsonlMetricsSink>> sink = JsonlMetricsSink::Open(path, 0);
    ASSERT_TRUE(sink.ok()) << sink.status();
    ASSERT_TRUE((*sink)->Record(At(1, 7.5)).ok());
    StepMetrics fp16 = At(2, std::numeric_limits<double>::infinity());
    fp16.loss_scaling = true, fp16.loss_scale = 65536, fp16.skipped = true;
    ASSERT_TRUE((*sink)->Record(fp16).ok());
  }
  const std::vector<std::string> lines = Lines(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], R"({"step":1,"epoch":0,"loss":7.5,"lm":7.0,"router_aux":0.25,"router_z":0.25,"lr":0.001,)"
                      R"("grad_norm":2.5,"tokens_per_s":100.0})");
  const nlohmann::json second = nlohmann::json::parse(lines[1]);
  EXPECT_TRUE(second["loss"].is_null());
  EXPECT_EQ(second["loss_scale"], 65536.0);
  EXPECT_EQ(second["skipped"], true);
}

TEST(JsonlMetricsSink, AResumeKeepsTheStepsUpToItsCheckpoint) {
  const std::string path = ::testing::TempDir() + "/metrics_resume.jsonl";
  {
    auto sink = JsonlMetricsSink::Open(path, 0);
    ASSERT_TRUE(sink.ok());
    for (int64_t step = 1; step <= 5; ++step) ASSERT_TRUE((*sink)->Record(At(step, 10.0 - step)).ok());
  }
  std::ofstream(path, std::ios::app) << "not json\n";
  {
    auto sink = JsonlMetricsSink::Open(path, 3);  // killed after logging 5; the checkpoint is step 3
    ASSERT_TRUE(sink.ok());
    ASSERT_TRUE((*sink)->Record(At(4, 1.0)).ok());
  }
  std::vector<int64_t> steps;
  std::vector<double> losses;
  for (const std::string& line : Lines(path)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    steps.push_back(j["step"]), losses.push_back(j["loss"]);
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(losses, (std::vector<double>{9, 8, 7, 1}));
}

std::string Printed(bool terminal, const std::vector<StepMetrics>& steps) {
  std::FILE* f = std::tmpfile();
  ProgressPrinter printer(f, terminal);
  for (const StepMetrics& m : steps) EXPECT_TRUE(printer.Record(m).ok());
  EXPECT_TRUE(printer.Finish().ok());
  std::fflush(f);
  std::rewind(f);
  std::string text;
  for (int c; (c = std::fgetc(f)) != EOF;) text.push_back(char(c));
  std::fclose(f);
  return text;
}

TEST(ProgressPrinter, OneLinePerStepInALog) {
  EXPECT_EQ(Printed(false, {At(1, 7.5), At(2, 6.25)}),
            "step 1/20 loss 7.5000 lr 0.001 | 100 tok/s | ETA 1:01\n"
            "step 2/20 loss 6.2500 lr 0.001 | 100 tok/s | ETA 1:01\n");
}

TEST(ProgressPrinter, ABarRedrawnInPlaceOnATerminal) {
  EXPECT_EQ(Printed(true, {At(10, 7.5)}),
            "\rstep 10/20 [###############---------------] loss 7.5000 | 100 tok/s | ETA 1:01   \n");
}

TEST(FormatDuration, MinutesAndHours) {
  EXPECT_EQ(FormatDuration(0), "0:00");
  EXPECT_EQ(FormatDuration(61.4), "1:01");
  EXPECT_EQ(FormatDuration(3599.4), "59:59");
  EXPECT_EQ(FormatDuration(3600 * 2 + 60 * 5), "2h5m");
}

}  // namespace
}  // namespace openmoe::train
