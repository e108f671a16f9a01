#include "kernels/reference/rms_norm.h"

#include <cmath>

namespace openmoe::kernels::reference {

void RmsNorm(const std::vector<float>& x, const std::vector<float>& weight, int64_t rows,
             int64_t hidden, float eps, std::vector<float>& y) {
  y.assign(static_cast<size_t>(rows * hidden), 0.0f);
  for (int64_t t = 0; t < rows; ++t) {
    const float* row = x.data() + t * hidden;  // [hidden]
    double sum_squares = 0.0;
    for (int64_t h = 0; h < hidden; ++h) sum_squares += double(row[h]) * double(row[h]);
    const double inv_rms = 1.0 / std::sqrt(sum_squares / double(hidden) + double(eps));
    for (int64_t h = 0; h < hidden; ++h) {
      y[t * hidden + h] = static_cast<float>(double(weight[h]) * double(row[h]) * inv_rms);
    }
  }
}

void RmsNormBackward(const std::vector<float>& x, const std::vector<float>& weight, const std::vector<float>& dy,
                     int64_t rows, int64_t hidden, float eps, std::vector<double>& dx, std::vector<double>& dw) {
  dx.assign(static_cast<size_t>(rows * hidden), 0.0);
  dw.assign(static_cast<size_t>(hidden), 0.0);
  for (int64_t t = 0; t < rows; ++t) {
    const float* xr = x.data() + t * hidden;   // [hidden]
    const float* gr = dy.data() + t * hidden;  // [hidden]
    double sum_squares = 0.0, dot = 0.0;       // sum x^2, sum dy w x
    for (int64_t h = 0; h < hidden; ++h) {
      sum_squares += double(xr[h]) * double(xr[h]);
      dot += double(gr[h]) * double(weight[h]) * double(xr[h]);
    }
    const double r = 1.0 / std::sqrt(sum_squares / double(hidden) + double(eps));
    for (int64_t h = 0; h < hidden; ++h) {
      dx[t * hidden + h] = r * double(gr[h]) * double(weight[h]) - double(xr[h]) * r * r * r * dot / double(hidden);
      dw[h] += double(gr[h]) * double(xr[h]) * r;
    }
  }
}

}  // namespace openmoe::kernels::reference
