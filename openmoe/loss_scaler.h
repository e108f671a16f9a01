// File: openmoe/loss_scaler.h
// Dynamic loss scaling for fp16 training, with the defaults and rules of Colossal-AI's
// DynamicGradScaler (what `--precision fp16` uses upstream):
//   - a step whose gradients are all finite counts towards growth: after growth_interval such
//     steps in a row the scale is multiplied by growth_factor (at most max_scale);
//   - a step with inf/NaN gradients is skipped (no optimizer update); after `hysteresis`
//     overflows the scale is multiplied by backoff_factor (at least min_scale).
//
//   LossScaler scaler;
//   model.set_loss_scale(scaler.scale());  ... backward ...
//   if (scaler.Update(gradients_finite)) optimizer.Step();
#ifndef OPENMOE_LOSS_SCALER_H_
#define OPENMOE_LOSS_SCALER_H_

#include <algorithm>
#include <cstdint>

namespace openmoe {

struct LossScalerOptions {
  double initial_scale   = 65536.0;  // 2^16
  double min_scale       = 1.0;
  double max_scale       = 16777216.0;  // 2^24
  double growth_factor   = 2.0;
  double backoff_factor  = 0.5;
  int64_t growth_interval = 1000;
  int64_t hysteresis      = 2;
};

// The part of the scaler a checkpoint keeps.
struct LossScalerState {
  double scale = 65536.0;
  int64_t growth_steps = 0;      // finite steps since the last overflow or growth
  int64_t overflow_steps = 0;    // overflows counted towards the next backoff
};

class LossScaler {
 public:
  explicit LossScaler(const LossScalerOptions& options = {}) : options_(options) { state_.scale = options.initial_scale; }

  double scale() const { return state_.scale; }
  const LossScalerState& state() const { return state_; }
  void Restore(const LossScalerState& state) { state_ = state; }
  // True when the scale is at its minimum: an overflow there will not go away by backing off.
  bool AtMinimum() const { return state_.scale <= options_.min_scale; }

  // After a backward pass at scale(): whether the optimizer may apply this step's gradients.
  bool Update(bool gradients_finite) {
    if (!gradients_finite) {
      state_.growth_steps = 0;
      if (++state_.overflow_steps >= options_.hysteresis) {
        state_.scale = std::max(options_.min_scale, state_.scale * options_.backoff_factor);
        state_.overflow_steps = 0;
      }
      return false;
    }
    if (++state_.growth_steps == options_.growth_interval) {
      state_.scale = std::min(options_.max_scale, state_.scale * options_.growth_factor);
      state_.growth_steps = 0;
      state_.overflow_steps = 0;
    }
    return true;
  }

 private:
  LossScalerOptions options_;
  LossScalerState state_;
};

}  // namespace openmoe

#endif  // OPENMOE_LOSS_SCALER_H_
