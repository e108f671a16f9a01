#include "openmoe/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace openmoe::train {

double LrSchedule::At(int64_t step) const {
  if (warmup_steps > 0 && step <= warmup_steps) return peak_lr * double(step) / double(warmup_steps);
  if (decay == Decay::kCosine && total_steps > warmup_steps) {
    const double t = double(step - warmup_steps) / double(total_steps - warmup_steps);
    return peak_lr * 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, t)));
  }
  return peak_lr;
}

}  // namespace openmoe::train
