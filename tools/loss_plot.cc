#include "tools/loss_plot.h"

#include <cairo/cairo.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace openmoe::tools {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr char kFont[] = "DejaVu Sans";  // fonts-dejavu-core, installed by ./bazelw
constexpr double kTickFont = 12, kLabelFont = 14, kTitleFont = 18, kLegendFont = 12;

struct Point {
  double x, y;
};

// An axis: the value range drawn and its ticks (multiples of a 1-2-5 step) with their labels.
struct Axis {
  double lo = 0, hi = 1, step = 1;
  std::vector<double> ticks;
  std::vector<std::string> labels;
};

double NiceStep(double raw) {
  const double e = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0}) {
    if (m * e >= raw * (1 - 1e-9)) return m * e;
  }
  return 10 * e;
}

std::string TrimZeros(std::string s) {
  if (s.find('.') == std::string::npos) return s;
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s;
}

// A tick value as short as its spacing allows: "250", "1.5", "0.05"; tiny or huge ones "2e-5", "1.2e-4".
std::string TickLabel(double v, double step, double max_abs) {
  if (std::fabs(v) < step * 1e-6) return "0";
  const double step_exp = std::floor(std::log10(step) + 1e-9);
  if (max_abs >= 1e-3 && max_abs < 1e6) return absl::StrFormat("%.*f", std::max(0, int(-step_exp)), v);
  int e = int(std::floor(std::log10(std::fabs(v)) + 1e-9));
  const int decimals = std::clamp(int(e - step_exp), 0, 6);
  double mantissa = std::round(v / std::pow(10.0, e) * std::pow(10.0, decimals)) / std::pow(10.0, decimals);
  if (std::fabs(mantissa) >= 10) mantissa /= 10, ++e;
  return absl::StrCat(TrimZeros(absl::StrFormat("%.*f", decimals, mantissa)), "e", e);
}

// At most max_intervals tick intervals across [lo, hi]. loose: 3% headroom, then the range grows to
// the outer ticks; otherwise 2% padding and the ticks lie inside. min_step: 1 for step numbers.
Axis MakeAxis(double lo, double hi, int max_intervals, bool loose, double min_step) {
  if (!(hi > lo)) {  // one value (one step, a constant loss): a window around it
    const double pad = std::max(min_step, lo == 0 ? 1.0 : std::fabs(lo) * 0.05);
    lo -= pad, hi += pad;
  } else {  // headroom, so that no curve runs along the frame (a range starting at 0 stays there)
    const double pad = (hi - lo) * (loose ? 0.03 : 0.02);
    lo = lo >= 0 && loose ? std::max(0.0, lo - pad) : lo - pad, hi += pad;
  }
  Axis a;
  a.step = std::max(min_step, NiceStep((hi - lo) / std::max(1, max_intervals)));
  if (loose) lo = std::floor(lo / a.step + 1e-9) * a.step, hi = std::ceil(hi / a.step - 1e-9) * a.step;
  a.lo = lo, a.hi = hi;
  double max_abs = 0;
  for (int64_t k = int64_t(std::ceil(lo / a.step - 1e-9)); double(k) * a.step <= hi + a.step * 1e-9; ++k) {
    a.ticks.push_back(double(k) * a.step);
    max_abs = std::max(max_abs, std::fabs(a.ticks.back()));
  }
  for (double t : a.ticks) a.labels.push_back(TickLabel(t, a.step, max_abs));
  return a;
}

void SetFont(cairo_t* cr, double size, bool bold = false) {
  cairo_select_font_face(cr, kFont, CAIRO_FONT_SLANT_NORMAL, bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
}

double TextWidth(cairo_t* cr, const std::string& s) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  return e.x_advance;
}

// Draws s anchored at (x, y): ax = 0 / 0.5 / 1 puts the left edge / centre / right edge there,
// ay = 0 / 0.5 / 1 the top / middle / baseline of the digits.
void DrawText(cairo_t* cr, const std::string& s, double x, double y, double ax, double ay) {
  cairo_text_extents_t digit;
  cairo_text_extents(cr, "0", &digit);
  cairo_move_to(cr, x - TextWidth(cr, s) * ax, y + digit.height * (1 - ay));
  cairo_show_text(cr, s.c_str());
}

// Reading bottom to top, centred at (x, y).
void DrawVerticalText(cairo_t* cr, const std::string& s, double x, double y) {
  cairo_save(cr);
  cairo_translate(cr, x, y);
  cairo_rotate(cr, -M_PI / 2);
  DrawText(cr, s, 0, 0, 0.5, 0.5);
  cairo_restore(cr);
}

void SetColour(cairo_t* cr, PlotColour c, double alpha = 1) {
  cairo_set_source_rgba(cr, c.r / 255.0, c.g / 255.0, c.b / 255.0, alpha);
}

struct Series {
  std::string label;
  PlotColour colour;
  double width;
  bool dashed, markers;
  std::vector<Point> pixels;
};

void StrokeSeries(cairo_t* cr, const Series& s) {
  SetColour(cr, s.colour);
  cairo_set_line_width(cr, s.width);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  const double dash[] = {7, 4};
  cairo_set_dash(cr, dash, s.dashed ? 2 : 0, 0);
  if (s.pixels.size() >= 2) {
    cairo_move_to(cr, s.pixels[0].x, s.pixels[0].y);
    for (size_t i = 1; i < s.pixels.size(); ++i) cairo_line_to(cr, s.pixels[i].x, s.pixels[i].y);
    cairo_stroke(cr);
  }
  cairo_set_dash(cr, dash, 0, 0);
  if (s.markers || s.pixels.size() == 1) {
    for (const Point& p : s.pixels) {
      cairo_arc(cr, p.x, p.y, std::max(2.5, s.width * 1.4), 0, 2 * M_PI);
      cairo_fill(cr);
    }
  }
}

// How many points along the series' lines fall inside the rectangle.
int PointsInside(const std::vector<Series>& series, double x0, double y0, double x1, double y1) {
  int n = 0;
  auto count = [&](Point p) { n += p.x >= x0 && p.x <= x1 && p.y >= y0 && p.y <= y1; };
  for (const Series& s : series) {
    for (size_t i = 0; i < s.pixels.size(); ++i) {
      count(s.pixels[i]);
      if (i == 0) continue;
      const Point a = s.pixels[i - 1], b = s.pixels[i];
      const int parts = int(std::hypot(b.x - a.x, b.y - a.y) / 3);
      for (int k = 1; k < parts; ++k) count({a.x + (b.x - a.x) * k / parts, a.y + (b.y - a.y) * k / parts});
    }
  }
  return n;
}

cairo_status_t AppendToString(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = absl::StrCat(path, ".tmp-", getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot write the loss curve '", path, "': ", std::strerror(errno)));
  }
  const bool written = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  const int write_errno = errno;
  if (std::fclose(f) != 0 || !written) {
    const int e = written ? errno : write_errno;
    std::remove(tmp.c_str());
    return absl::UnavailableError(absl::StrCat("cannot write the loss curve '", path, "': ", std::strerror(e)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    return absl::UnavailableError(absl::StrCat("cannot rename '", tmp, "' to '", path, "': ", std::strerror(e)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LossCurve> ReadLossCurve(const std::string& metrics_jsonl) {
  std::ifstream in(metrics_jsonl);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", metrics_jsonl, "'"));
  LossCurve curve;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) continue;
    auto number = [&](const char* key) { return j.contains(key) && j[key].is_number() ? j[key].get<double>() : kNaN; };
    curve.steps.push_back(j["step"].get<int64_t>());
    curve.losses.push_back(number("loss"));
    curve.learning_rates.push_back(number("lr"));
  }
  return curve;
}

std::vector<double> SmoothLosses(const std::vector<double>& losses, double span) {
  const double alpha = 2.0 / (std::max(1.0, span) + 1.0);
  std::vector<double> out(losses.size(), kNaN);
  double sum = 0, weight = 0;
  for (size_t i = 0; i < losses.size(); ++i) {
    if (!std::isfinite(losses[i])) continue;
    sum = (1 - alpha) * sum + alpha * losses[i];
    weight = (1 - alpha) * weight + alpha;
    out[i] = sum / weight;
  }
  return out;
}

double DefaultSmoothingSpan(size_t n) { return std::clamp(std::round(double(n) / 40.0), 3.0, 100.0); }

absl::Status WriteLossCurvePng(const std::string& path, const std::vector<int64_t>& steps,
                               const std::vector<double>& losses, const std::vector<double>& learning_rates,
                               const std::string& title) {
  if (losses.size() != steps.size() || (!learning_rates.empty() && learning_rates.size() != steps.size())) {
    return absl::InvalidArgumentError(absl::StrCat("loss curve '", path, "': ", steps.size(), " steps, ", losses.size(),
                                                   " losses, ", learning_rates.size(), " learning rates"));
  }
  size_t finite_losses = 0;
  for (double l : losses) finite_losses += std::isfinite(l);
  const double span = DefaultSmoothingSpan(finite_losses);
  const std::vector<double> smoothed = SmoothLosses(losses, span);

  // Data ranges over the finite values only.
  double x_lo = INFINITY, x_hi = -INFINITY, y_lo = INFINITY, y_hi = -INFINITY, lr_lo = 0, lr_hi = -INFINITY;
  for (size_t i = 0; i < steps.size(); ++i) {
    const bool has_lr = !learning_rates.empty() && std::isfinite(learning_rates[i]);
    if (std::isfinite(losses[i])) {
      y_lo = std::min({y_lo, losses[i], smoothed[i]}), y_hi = std::max({y_hi, losses[i], smoothed[i]});
    }
    if (has_lr) lr_lo = std::min(lr_lo, learning_rates[i]), lr_hi = std::max(lr_hi, learning_rates[i]);
    if (std::isfinite(losses[i]) || has_lr) x_lo = std::min(x_lo, double(steps[i])), x_hi = std::max(x_hi, double(steps[i]));
  }
  const bool any_loss = finite_losses > 0, any_lr = lr_hi > -INFINITY;
  if (!any_loss) y_lo = 0, y_hi = 1;
  if (!(x_hi >= x_lo) && !steps.empty()) {
    x_lo = double(*std::min_element(steps.begin(), steps.end())), x_hi = double(*std::max_element(steps.begin(), steps.end()));
  }
  if (!(x_hi >= x_lo)) x_lo = 0, x_hi = 1;

  const int W = kLossCurveWidth, H = kLossCurveHeight;
  std::unique_ptr<cairo_surface_t, decltype(&cairo_surface_destroy)> surface(
      cairo_image_surface_create(CAIRO_FORMAT_RGB24, W, H), &cairo_surface_destroy);
  std::unique_ptr<cairo_t, decltype(&cairo_destroy)> context(cairo_create(surface.get()), &cairo_destroy);
  cairo_t* cr = context.get();
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);

  // Layout: the y ticks first (the plot's height is fixed), their labels' widths set the side
  // margins, which set the plot's width and so the x ticks.
  const double top = 48, bottom = 64, tick = 5, gap = 4;
  const double plot_h = H - top - bottom;
  const int y_intervals = std::clamp(int(plot_h / 45), 2, 10);
  const Axis y_axis = MakeAxis(y_lo, y_hi, y_intervals, /*loose=*/true, 0);
  const Axis lr_axis = MakeAxis(any_lr ? lr_lo : 0, any_lr ? lr_hi : 1, y_intervals, /*loose=*/true, 0);
  SetFont(cr, kTickFont);
  double left_w = 0, right_w = 0;
  for (const std::string& s : y_axis.labels) left_w = std::max(left_w, TextWidth(cr, s));
  for (const std::string& s : lr_axis.labels) right_w = std::max(right_w, TextWidth(cr, s));
  const double left = 14 + kLabelFont + 10 + left_w + tick + gap;
  const double right = any_lr ? 14 + kLabelFont + 10 + right_w + tick + gap : 30;
  const double plot_w = W - left - right;
  const Axis x_axis = MakeAxis(x_lo, x_hi, std::clamp(int(plot_w / 95), 2, 10), /*loose=*/false, 1);
  auto px = [&](double x) { return left + (x - x_axis.lo) / (x_axis.hi - x_axis.lo) * plot_w; };
  auto py = [&](double y) { return top + plot_h - (y - y_axis.lo) / (y_axis.hi - y_axis.lo) * plot_h; };
  auto pr = [&](double lr) { return top + plot_h - (lr - lr_axis.lo) / (lr_axis.hi - lr_axis.lo) * plot_h; };

  // Grid at the loss and step ticks.
  cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
  cairo_set_line_width(cr, 1);
  for (double t : y_axis.ticks) {
    const double y = std::round(py(t)) + 0.5;
    cairo_move_to(cr, left, y), cairo_line_to(cr, left + plot_w, y);
  }
  for (double t : x_axis.ticks) {
    const double x = std::round(px(t)) + 0.5;
    cairo_move_to(cr, x, top), cairo_line_to(cr, x, top + plot_h);
  }
  cairo_stroke(cr);

  // The series, clipped to the plot area: learning rate underneath, the smoothed loss on top.
  const size_t n = steps.size();
  Series lr_series{"learning rate (right axis)", kLearningRateColour, 1.8, /*dashed=*/true, /*markers=*/false, {}};
  Series raw{"loss per step", kRawLossColour, 1.4, false, /*markers=*/finite_losses <= 40, {}};
  Series smooth{absl::StrCat("smoothed (EMA, span ", int(span), " steps)"), kSmoothedLossColour, 2.6, false, false, {}};
  for (size_t i = 0; i < n; ++i) {
    const double x = px(double(steps[i]));
    if (std::isfinite(losses[i])) raw.pixels.push_back({x, py(losses[i])}), smooth.pixels.push_back({x, py(smoothed[i])});
    if (!learning_rates.empty() && std::isfinite(learning_rates[i])) lr_series.pixels.push_back({x, pr(learning_rates[i])});
  }
  std::vector<Series> series;
  if (any_lr) series.push_back(lr_series);
  if (any_loss) series.push_back(raw), series.push_back(smooth);
  cairo_save(cr);
  cairo_rectangle(cr, left, top, plot_w, plot_h);
  cairo_clip(cr);
  for (const Series& s : series) StrokeSeries(cr, s);
  cairo_restore(cr);

  // Frame, ticks and their labels.
  cairo_set_source_rgb(cr, 0.25, 0.25, 0.25);
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, std::round(left) + 0.5, std::round(top) + 0.5, std::round(plot_w), std::round(plot_h));
  for (double t : y_axis.ticks) {
    const double y = std::round(py(t)) + 0.5;
    cairo_move_to(cr, left - tick, y), cairo_line_to(cr, left, y);
  }
  for (double t : x_axis.ticks) {
    const double x = std::round(px(t)) + 0.5;
    cairo_move_to(cr, x, top + plot_h), cairo_line_to(cr, x, top + plot_h + tick);
  }
  if (any_lr) {
    for (double t : lr_axis.ticks) {
      const double y = std::round(pr(t)) + 0.5;
      cairo_move_to(cr, left + plot_w, y), cairo_line_to(cr, left + plot_w + tick, y);
    }
  }
  cairo_stroke(cr);
  cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
  SetFont(cr, kTickFont);
  for (size_t i = 0; i < y_axis.ticks.size(); ++i) DrawText(cr, y_axis.labels[i], left - tick - gap, py(y_axis.ticks[i]), 1, 0.5);
  for (size_t i = 0; i < x_axis.ticks.size(); ++i) {
    DrawText(cr, x_axis.labels[i], px(x_axis.ticks[i]), top + plot_h + tick + gap, 0.5, 0);
  }
  if (any_lr) {
    for (size_t i = 0; i < lr_axis.ticks.size(); ++i) {
      DrawText(cr, lr_axis.labels[i], left + plot_w + tick + gap, pr(lr_axis.ticks[i]), 0, 0.5);
    }
  }

  // Axis labels and title.
  SetFont(cr, kLabelFont);
  DrawText(cr, "step", left + plot_w / 2, H - 14, 0.5, 1);
  DrawVerticalText(cr, "loss per token", 14 + kLabelFont / 2, top + plot_h / 2);
  if (any_lr) DrawVerticalText(cr, "learning rate", W - 14 - kLabelFont / 2, top + plot_h / 2);
  SetFont(cr, kTitleFont, /*bold=*/true);
  DrawText(cr, title, left + plot_w / 2, 16, 0.5, 0);
  if (!any_loss) {
    SetFont(cr, kLabelFont);
    cairo_set_source_rgb(cr, 0.4, 0.4, 0.4);
    DrawText(cr, "no finite loss values", left + plot_w / 2, top + plot_h / 2, 0.5, 0.5);
  }

  // Legend in the candidate corner that hides the fewest points of the curves.
  if (!series.empty()) {
    SetFont(cr, kLegendFont);
    const double pad = 9, row = 20, sample = 30, inset = 10;
    double text_w = 0;
    for (const Series& s : series) text_w = std::max(text_w, TextWidth(cr, s.label));
    const double box_w = pad + sample + 8 + text_w + pad, box_h = pad + row * series.size() + pad - 6;
    const Point corners[] = {{left + plot_w - inset - box_w, top + inset},          // top right
                             {left + inset, top + inset},                           // top left
                             {left + plot_w - inset - box_w, top + plot_h - inset - box_h},  // bottom right
                             {left + inset, top + plot_h - inset - box_h},          // bottom left
                             {left + (plot_w - box_w) / 2, top + inset},            // top centre
                             {left + (plot_w - box_w) / 2, top + plot_h - inset - box_h}};  // bottom centre
    Point at = corners[0];
    int best = std::numeric_limits<int>::max();
    for (const Point& c : corners) {
      const int hidden = PointsInside(series, c.x - 4, c.y - 4, c.x + box_w + 4, c.y + box_h + 4);
      if (hidden < best) best = hidden, at = c;
    }
    cairo_rectangle(cr, std::round(at.x) + 0.5, std::round(at.y) + 0.5, std::round(box_w), std::round(box_h));
    cairo_set_source_rgba(cr, 1, 1, 1, 0.9);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.75, 0.75, 0.75);
    cairo_set_line_width(cr, 1);
    cairo_stroke(cr);
    // Rows in drawing order reversed: the smoothed loss first.
    for (size_t r = 0; r < series.size(); ++r) {
      Series s = series[series.size() - 1 - r];
      const double y = at.y + pad + row * r + 5;
      s.pixels = {{at.x + pad, y}, {at.x + pad + sample, y}};
      s.markers = false;
      StrokeSeries(cr, s);
      if (series[series.size() - 1 - r].markers) {
        cairo_arc(cr, at.x + pad + sample / 2, y, std::max(2.5, s.width * 1.4), 0, 2 * M_PI);
        cairo_fill(cr);
      }
      cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
      DrawText(cr, s.label, at.x + pad + sample + 8, y, 0, 0.5);
    }
  }

  cairo_surface_flush(surface.get());
  if (cairo_status(cr) != CAIRO_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrCat("loss curve '", path, "': cairo: ", cairo_status_to_string(cairo_status(cr))));
  }
  std::string png;
  const cairo_status_t encoded = cairo_surface_write_to_png_stream(surface.get(), &AppendToString, &png);
  if (encoded != CAIRO_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrCat("loss curve '", path, "': cairo: ", cairo_status_to_string(encoded)));
  }
  return WriteFileAtomically(path, png);
}

}  // namespace openmoe::tools
