// File: tools/loss_plot.h
// A loss curve as a PNG (no plotting library): white canvas, axes with min/max labels drawn as
// tick marks, the per-step loss in blue and its moving average in red. The PNG is written with
// stored (uncompressed) deflate blocks, so it needs no zlib.
#ifndef TOOLS_LOSS_PLOT_H_
#define TOOLS_LOSS_PLOT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace openmoe::tools {

absl::Status WriteLossCurvePng(const std::string& path, const std::vector<double>& losses);

}  // namespace openmoe::tools

#endif  // TOOLS_LOSS_PLOT_H_
