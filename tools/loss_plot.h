// File: tools/loss_plot.h
// The training curve as a PNG, drawn with Cairo (Debian's libcairo2-dev, //third_party:cairo):
// a title, the per-step loss (light blue) and its bias-corrected exponential moving average (dark
// blue) against the left axis, the learning rate (orange, dashed) against a right axis, axes with
// round tick values, the labels "step", "loss per token" and "learning rate", and a legend in the
// corner the curves leave most free. Non-finite losses and learning rates are skipped; one step,
// a constant loss and thousands of steps all draw. The file is written under a temporary name
// and renamed, so a reader never sees half a PNG.
#ifndef TOOLS_LOSS_PLOT_H_
#define TOOLS_LOSS_PLOT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace openmoe::tools {

inline constexpr int kLossCurveWidth = 960, kLossCurveHeight = 540;

// The series' colours (8-bit sRGB), for tests that look for them in the picture.
struct PlotColour {
  uint8_t r, g, b;
};
inline constexpr PlotColour kRawLossColour{150, 190, 235};
inline constexpr PlotColour kSmoothedLossColour{25, 75, 180};
inline constexpr PlotColour kLearningRateColour{235, 125, 30};

// One entry per logged step: the step number, its loss per token and its learning rate (NaN when
// a metrics line has none).
struct LossCurve {
  std::vector<int64_t> steps;
  std::vector<double> losses;
  std::vector<double> learning_rates;
};

// The "step", "loss" and "lr" of every line of a trainer's metrics.jsonl (lines without an
// integer step are skipped; a null / missing loss, e.g. an fp16 overflow step, becomes NaN).
absl::StatusOr<LossCurve> ReadLossCurve(const std::string& metrics_jsonl);

// Bias-corrected EMA over the finite values (as TensorBoard's smoothing): NaN where the input is
// not finite. `span` is the EMA's span in steps (alpha = 2 / (span + 1)).
std::vector<double> SmoothLosses(const std::vector<double>& losses, double span);

// The EMA span used for `n` points: about n / 40 steps, at least 3, at most 100.
double DefaultSmoothingSpan(size_t n);

// steps, losses and learning_rates are parallel (learning_rates may be empty: no right axis).
absl::Status WriteLossCurvePng(const std::string& path, const std::vector<int64_t>& steps,
                               const std::vector<double>& losses, const std::vector<double>& learning_rates,
                               const std::string& title = "OpenMoE fine-tuning");

}  // namespace openmoe::tools

#endif  // TOOLS_LOSS_PLOT_H_
