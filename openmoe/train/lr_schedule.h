// File: openmoe/train/lr_schedule.h
// The learning rate of each optimizer step: a linear warmup from peak / warmup_steps to the peak
// over the first warmup_steps steps, then constant (upstream's train.py) or a cosine decay that
// reaches 0 at the last step.
//
//   LrSchedule schedule{1e-3, /*warmup_steps=*/20, LrSchedule::Decay::kCosine, /*total_steps=*/440};
//   adamw.lr = schedule.At(step);   // step counts from 1
#ifndef OPENMOE_TRAIN_LR_SCHEDULE_H_
#define OPENMOE_TRAIN_LR_SCHEDULE_H_

#include <cstdint>

namespace openmoe::train {

struct LrSchedule {
  enum class Decay { kConstant, kCosine };
  double peak_lr = 1e-5;
  int64_t warmup_steps = 0;
  Decay decay = Decay::kConstant;
  int64_t total_steps = 0;  // where the cosine reaches 0

  // The rate of step `step` (1-based): peak * step / warmup during warmup; then the peak, or
  // peak * (1 + cos(pi * t)) / 2 with t = (step - warmup) / (total - warmup), t capped at 1.
  double At(int64_t step) const;
};

}  // namespace openmoe::train

#endif  // OPENMOE_TRAIN_LR_SCHEDULE_H_
