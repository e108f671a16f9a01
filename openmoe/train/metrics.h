// File: openmoe/train/metrics.h
// What a training run reports after each optimizer step, and where it goes: a MetricsSink gets
// one StepMetrics per step (Record) and one Finish() when the run's loop ends. Two sinks:
//   - JsonlMetricsSink: metrics.jsonl, one JSON object per step
//       {"step", "epoch", "loss", "lm", "router_aux", "router_z", "lr", "grad_norm", "tokens_per_s"
//        [, "loss_scale", "skipped" with loss scaling]}
//     (a non-finite loss is written as null); a resumed run first drops the lines after its
//     checkpoint's step, so every step appears once;
//   - ProgressPrinter: on a terminal one bar redrawn in place, otherwise (a log, a pipe) one plain
//     line per step.
#ifndef OPENMOE_TRAIN_METRICS_H_
#define OPENMOE_TRAIN_METRICS_H_

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/losses.h"

namespace openmoe::train {

struct StepMetrics {
  int64_t step = 0;         // optimizer steps done, this one included (from 1)
  int64_t epoch = 0;        // the epoch this step's batch came from (from 0)
  int64_t total_steps = 0;  // steps the run will take
  LossParts loss;           // summed over the batch's label positions
  double lr = 0, grad_norm = 0;  // the step's learning rate; the global gradient norm before clipping
  double tokens_per_s = 0;  // over the steps of this process so far
  double eta_seconds = 0;   // at that rate, until total_steps
  bool loss_scaling = false;  // fp16: loss_scale and skipped below are meaningful
  double loss_scale = 1;
  bool skipped = false;     // an overflowing fp16 step: no update
};

class MetricsSink {
 public:
  virtual ~MetricsSink() = default;
  virtual absl::Status Record(const StepMetrics& metrics) = 0;
  // The run's loop has ended (not called when it stops with an error).
  virtual absl::Status Finish() { return absl::OkStatus(); }
};

class JsonlMetricsSink final : public MetricsSink {
 public:
  // Opens `path` for a run that starts after step `resume_step`: 0 starts an empty file; a
  // larger one keeps the lines of steps up to it (rewritten atomically) and appends after them.
  static absl::StatusOr<std::unique_ptr<JsonlMetricsSink>> Open(const std::string& path, int64_t resume_step);
  absl::Status Record(const StepMetrics& metrics) override;
  // One record as its metrics.jsonl line (without the newline).
  static std::string Line(const StepMetrics& metrics);

 private:
  JsonlMetricsSink(std::string path, std::ofstream out) : path_(std::move(path)), out_(std::move(out)) {}
  std::string path_;
  std::ofstream out_;
};

class ProgressPrinter final : public MetricsSink {
 public:
  // `terminal`: a bar redrawn in place (and a newline at Finish); else one line per step.
  ProgressPrinter(std::FILE* out, bool terminal) : out_(out), terminal_(terminal) {}
  // A bar when `out` is a terminal (isatty).
  explicit ProgressPrinter(std::FILE* out);
  absl::Status Record(const StepMetrics& metrics) override;
  absl::Status Finish() override;

 private:
  std::FILE* out_;
  bool terminal_;
};

// "m:ss" below an hour, "XhYm" above (rounded to the second).
std::string FormatDuration(double seconds);

}  // namespace openmoe::train

#endif  // OPENMOE_TRAIN_METRICS_H_
