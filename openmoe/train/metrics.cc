#include "openmoe/train/metrics.h"

#include <unistd.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "openmoe/train/text_files.h"

namespace openmoe::train {

absl::StatusOr<std::unique_ptr<JsonlMetricsSink>> JsonlMetricsSink::Open(const std::string& path, int64_t resume_step) {
  if (resume_step > 0) {
    // The lines of the steps up to the checkpoint's: a run killed after it logged later steps
    // would otherwise leave them twice.
    std::string kept;
    std::ifstream old(path);
    for (std::string line; std::getline(old, line);) {
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer() ||
          j["step"].get<int64_t>() > resume_step) {
        continue;
      }
      kept += line + "\n";
    }
    old.close();
    if (absl::Status status = WriteTextAtomically(path, kept); !status.ok()) return status;
  }
  std::ofstream out(path, resume_step > 0 ? std::ios::app : std::ios::trunc);
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write '", path, "'"));
  return std::unique_ptr<JsonlMetricsSink>(new JsonlMetricsSink(path, std::move(out)));
}

std::string JsonlMetricsSink::Line(const StepMetrics& m) {
  nlohmann::ordered_json line;
  line["step"] = m.step, line["epoch"] = m.epoch, line["loss"] = m.loss.total, line["lm"] = m.loss.lm;
  line["router_aux"] = m.loss.router_aux, line["router_z"] = m.loss.router_z, line["lr"] = m.lr;
  line["grad_norm"] = m.grad_norm, line["tokens_per_s"] = m.tokens_per_s;
  if (m.loss_scaling) line["loss_scale"] = m.loss_scale, line["skipped"] = m.skipped;
  return line.dump();
}

absl::Status JsonlMetricsSink::Record(const StepMetrics& metrics) {
  out_ << Line(metrics) << "\n" << std::flush;
  if (!out_) return absl::UnavailableError(absl::StrCat("cannot write '", path_, "'"));
  return absl::OkStatus();
}

ProgressPrinter::ProgressPrinter(std::FILE* out) : ProgressPrinter(out, isatty(fileno(out)) != 0) {}

absl::Status ProgressPrinter::Record(const StepMetrics& m) {
  if (terminal_) {  // one bar, redrawn in place
    const int width = 30, filled = int(width * double(m.step) / double(m.total_steps));
    std::fprintf(out_, "\rstep %lld/%lld [%s%s] loss %.4f | %.0f tok/s | ETA %s   ", (long long)m.step,
                 (long long)m.total_steps, std::string(filled, '#').c_str(), std::string(width - filled, '-').c_str(),
                 m.loss.total, m.tokens_per_s, FormatDuration(m.eta_seconds).c_str());
  } else {  // a log file or pipe: one plain line per step
    std::fprintf(out_, "step %lld/%lld loss %.4f lr %.3g | %.0f tok/s | ETA %s\n", (long long)m.step,
                 (long long)m.total_steps, m.loss.total, m.lr, m.tokens_per_s, FormatDuration(m.eta_seconds).c_str());
  }
  return absl::OkStatus();
}

absl::Status ProgressPrinter::Finish() {
  if (terminal_) std::fprintf(out_, "\n");
  return absl::OkStatus();
}

std::string FormatDuration(double seconds) {
  const int64_t s = int64_t(seconds + 0.5);
  return s >= 3600 ? absl::StrCat(s / 3600, "h", (s / 60) % 60, "m") : absl::StrCat(s / 60, ":", (s % 60) < 10 ? "0" : "", s % 60);
}

}  // namespace openmoe::train
