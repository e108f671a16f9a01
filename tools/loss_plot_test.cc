// Renders loss curves to TEST_TMPDIR (also copied to TEST_UNDECLARED_OUTPUTS_DIR, to look at) and
// reads them back with Cairo: a PNG of the expected size whose plot area holds the series'
// colours across its width (the legend alone, in one corner, cannot), and clear errors.
#include "tools/loss_plot.h"

#include <cairo/cairo.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace openmoe::tools {
namespace {

namespace fs = std::filesystem;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string TmpDir() {
  const char* dir = std::getenv("TEST_TMPDIR");
  return dir ? dir : fs::temp_directory_path().string();
}

// A fine-tuning-like run: loss decaying from ~7 to ~1 with noise, 10% warmup then cosine.
struct SyntheticRun {
  std::vector<int64_t> steps;
  std::vector<double> losses, lrs;
};
SyntheticRun MakeRun(int n, double peak_lr = 2e-3) {
  SyntheticRun r;
  const int warmup = std::max(1, n / 10);
  for (int i = 1; i <= n; ++i) {
    r.steps.push_back(i);
    const double noise = 0.35 * std::sin(i * 2.7) + 0.2 * std::sin(i * 7.3);
    r.losses.push_back(1.0 + 6.0 * std::exp(-6.0 * i / n) + noise);
    r.lrs.push_back(i <= warmup ? peak_lr * i / warmup
                                : peak_lr * 0.5 * (1 + std::cos(M_PI * double(i - warmup) / double(n - warmup))));
  }
  return r;
}

struct Image {
  int width = 0, height = 0;
  std::vector<uint32_t> pixels;  // 0x00RRGGBB
};

Image ReadPng(const std::string& path) {
  Image image;
  cairo_surface_t* s = cairo_image_surface_create_from_png(path.c_str());
  EXPECT_EQ(cairo_surface_status(s), CAIRO_STATUS_SUCCESS) << path << ": " << cairo_status_to_string(cairo_surface_status(s));
  if (cairo_surface_status(s) == CAIRO_STATUS_SUCCESS) {
    image.width = cairo_image_surface_get_width(s), image.height = cairo_image_surface_get_height(s);
    const int stride = cairo_image_surface_get_stride(s);
    const unsigned char* data = cairo_image_surface_get_data(s);
    for (int y = 0; y < image.height; ++y) {
      const auto* row = reinterpret_cast<const uint32_t*>(data + size_t(y) * stride);
      for (int x = 0; x < image.width; ++x) image.pixels.push_back(row[x] & 0xFFFFFFu);
    }
  }
  cairo_surface_destroy(s);
  return image;
}

bool Near(uint32_t p, PlotColour c, int tolerance = 12) {
  return std::abs(int((p >> 16) & 255) - c.r) <= tolerance && std::abs(int((p >> 8) & 255) - c.g) <= tolerance &&
         std::abs(int(p & 255) - c.b) <= tolerance;
}

// Pixels of colour c in each of `strips` vertical strips of the inner plot region (well inside
// the margins, which hold only text and ticks).
std::vector<int> ColourByStrip(const Image& image, PlotColour c, int strips = 8) {
  std::vector<int> counts(strips, 0);
  const int x0 = 110, x1 = image.width - 110, y0 = 55, y1 = image.height - 70;
  for (int y = y0; y < y1; ++y) {
    for (int x = x0; x < x1; ++x) {
      if (Near(image.pixels[size_t(y) * image.width + x], c)) ++counts[(x - x0) * strips / (x1 - x0)];
    }
  }
  return counts;
}

int Total(const std::vector<int>& v) {
  int t = 0;
  for (int x : v) t += x;
  return t;
}
int NonEmpty(const std::vector<int>& v) {
  int t = 0;
  for (int x : v) t += x > 0;
  return t;
}

// Writes the curve, checks the PNG's signature and size, and returns it read back.
Image Render(const std::string& name, const SyntheticRun& r) {
  const std::string path = (fs::path(TmpDir()) / (name + ".png")).string();
  const absl::Status status = WriteLossCurvePng(path, r.steps, r.losses, r.lrs);
  EXPECT_TRUE(status.ok()) << status;
  std::ifstream in(path, std::ios::binary);
  std::string signature(8, '\0');
  in.read(signature.data(), 8);
  EXPECT_EQ(signature, std::string("\x89PNG\r\n\x1a\n", 8)) << path;
  if (const char* out = std::getenv("TEST_UNDECLARED_OUTPUTS_DIR")) {
    std::error_code ignored;
    fs::copy_file(path, fs::path(out) / (name + ".png"), fs::copy_options::overwrite_existing, ignored);
  }
  for (const auto& entry : fs::directory_iterator(TmpDir())) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << "left behind: " << entry.path();
  }
  Image image = ReadPng(path);
  EXPECT_EQ(image.width, kLossCurveWidth);
  EXPECT_EQ(image.height, kLossCurveHeight);
  return image;
}

TEST(LossPlotTest, SeriesColoursAcrossThePlot) {
  const Image image = Render("curve_300_steps", MakeRun(300));
  ASSERT_EQ(image.pixels.size(), size_t(kLossCurveWidth) * kLossCurveHeight);
  for (const auto& [name, colour] : {std::pair{"raw loss", kRawLossColour}, std::pair{"smoothed loss", kSmoothedLossColour},
                                     std::pair{"learning rate", kLearningRateColour}}) {
    const std::vector<int> strips = ColourByStrip(image, colour);
    EXPECT_GE(NonEmpty(strips), 7) << name << " is not drawn across the plot";
    EXPECT_GE(Total(strips), 200) << name;
  }
}

TEST(LossPlotTest, EdgeCasesRender) {
  SyntheticRun one{{1}, {6.5}, {1e-5}};
  const Image single = Render("one_step", one);
  // The one point is a dot of the smoothed colour (drawn over the raw one) in the plot's middle
  // (strips 2-4 of 8; the legend's samples lie in a corner).
  const std::vector<int> middle = ColourByStrip(single, kSmoothedLossColour);
  EXPECT_GT(middle[2] + middle[3] + middle[4], 10);

  SyntheticRun constant = MakeRun(50);
  for (double& l : constant.losses) l = 2.0;
  for (double& lr : constant.lrs) lr = 1e-5;
  const Image flat = Render("constant", constant);
  EXPECT_GE(NonEmpty(ColourByStrip(flat, kSmoothedLossColour)), 7);

  SyntheticRun holes = MakeRun(120);
  holes.losses[0] = kNaN, holes.losses[30] = INFINITY, holes.losses[31] = -INFINITY, holes.losses[77] = kNaN;
  holes.lrs[50] = kNaN;
  const Image gaps = Render("nan_inf", holes);
  EXPECT_GE(NonEmpty(ColourByStrip(gaps, kRawLossColour)), 7);
  EXPECT_GE(NonEmpty(ColourByStrip(gaps, kSmoothedLossColour)), 7);

  const Image many = Render("5000_steps", MakeRun(5000, 1e-4));
  EXPECT_GE(NonEmpty(ColourByStrip(many, kRawLossColour)), 7);
  EXPECT_GE(NonEmpty(ColourByStrip(many, kLearningRateColour)), 7);

  SyntheticRun all_nan{{1, 2}, {kNaN, INFINITY}, {}};
  Render("no_finite_loss", all_nan);  // axes and a note, no series
}

TEST(LossPlotTest, SmoothingIsBiasCorrectedAndSkipsNaN) {
  const std::vector<double> s = SmoothLosses({4.0, kNaN, 4.0, 4.0}, 10);
  EXPECT_DOUBLE_EQ(s[0], 4.0);
  EXPECT_TRUE(std::isnan(s[1]));
  EXPECT_DOUBLE_EQ(s[3], 4.0);
  const std::vector<double> t = SmoothLosses({0.0, 2.0}, 1);  // span 1: no smoothing
  EXPECT_DOUBLE_EQ(t[1], 2.0);
}

TEST(LossPlotTest, BadPathIsAClearError) {
  const std::string path = "/nonexistent_loss_plot_dir/sub/loss_curve.png";
  const SyntheticRun r = MakeRun(10);
  const absl::Status status = WriteLossCurvePng(path, r.steps, r.losses, r.lrs);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find(path), std::string::npos) << status;
  EXPECT_NE(status.message().find("No such file or directory"), std::string::npos) << status;

  const absl::Status mismatch = WriteLossCurvePng((fs::path(TmpDir()) / "x.png").string(), {1, 2}, {1.0}, {});
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kInvalidArgument) << mismatch;
}

TEST(LossPlotTest, ReadsMetricsJsonl) {
  const std::string path = (fs::path(TmpDir()) / "metrics.jsonl").string();
  std::ofstream(path) << "{\"step\":1,\"loss\":2500.5,\"lr\":0.0001}\n"
                      << "not json\n"
                      << "{\"step\":2,\"loss\":null,\"lr\":0.0002,\"skipped\":true}\n"
                      << "{\"epoch\":0}\n"
                      << "{\"step\":3,\"loss\":2400}\n";
  const absl::StatusOr<LossCurve> curve = ReadLossCurve(path);
  ASSERT_TRUE(curve.ok()) << curve.status();
  EXPECT_EQ(curve->steps, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_DOUBLE_EQ(curve->losses[0], 2500.5);
  EXPECT_TRUE(std::isnan(curve->losses[1]));
  EXPECT_DOUBLE_EQ(curve->learning_rates[1], 2e-4);
  EXPECT_TRUE(std::isnan(curve->learning_rates[2]));

  const absl::StatusOr<LossCurve> missing = ReadLossCurve("/nonexistent_loss_plot_dir/metrics.jsonl");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent_loss_plot_dir/metrics.jsonl"), std::string::npos);
}

}  // namespace
}  // namespace openmoe::tools
