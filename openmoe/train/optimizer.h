// File: openmoe/train/optimizer.h
// The optimizer of a training run, over the model's flat buffers (TrainableModel::flat_params /
// flat_grads / layout): AdamW (kernels/adamw.h) with float32 moments in the same layout, clipping
// by the global gradient norm, and for fp16 the dynamic loss scaler that skips overflowing steps.
// In a bf16 / fp16 run AdamW also writes the rounded weights into the model's 16-bit working copy
// (kernels::AdamWStepAndCast), so the next step skips its own conversion.
//
//   AdamWOptimizer opt(model.layout(), options);
//   model.set_loss_scale(float(opt.loss_scale()));  ... model.ForwardBackward ... (reduce gradients)
//   OPENMOE_ASSIGN_OR_RETURN(OptimizerStepResult r, opt.Step(model, lr, std::isfinite(loss.total)));
#ifndef OPENMOE_TRAIN_OPTIMIZER_H_
#define OPENMOE_TRAIN_OPTIMIZER_H_

#include <cstdint>

#include <Kokkos_Core.hpp>

#include "absl/status/statusor.h"
#include "kernels/adamw.h"
#include "openmoe/core/tensor_types.h"
#include "openmoe/loss_scaler.h"
#include "openmoe/parameter_layout.h"
#include "openmoe/trainable_model.h"

namespace openmoe::train {

using TrainSpace = Kokkos::DefaultExecutionSpace;
using TrainModel = TrainableModel<TrainSpace>;

struct OptimizerOptions {
  kernels::AdamWOptions adamw;  // its lr is each Step's
  double max_grad_norm = 0;     // clip the global gradient norm to this (0: no clipping)
  // The model's compute type: bf16 / fp16 refresh its working copy in AdamW's pass; fp16 also
  // turns on loss scaling.
  TrainModel::ComputeDtype compute_dtype = TrainModel::ComputeDtype::kFp32;
  LossScalerOptions loss_scaler;  // fp16 only
};

struct OptimizerStepResult {
  double grad_norm = 0;    // global L2 norm of the gradients, before clipping
  double loss_scale = 1;   // the scale the step's backward pass ran with (1 without loss scaling)
  bool applied = true;     // false: an fp16 overflow, no update
  // An overflow at the scaler's minimum scale: backing off cannot help, the run should stop.
  bool overflow_at_minimum_scale = false;
};

// sqrt(sum g^2) in double over a flat buffer (one reduction; the layout's gaps are 0).
double GlobalNorm(Vector<float, TrainSpace> flat);

class AdamWOptimizer {
 public:
  AdamWOptimizer() = default;
  // Zero moments for `layout`.
  AdamWOptimizer(const ParameterLayout& layout, const OptimizerOptions& options);

  const OptimizerOptions& options() const { return options_; }
  bool loss_scaling() const { return options_.compute_dtype == TrainModel::ComputeDtype::kFp16; }
  // The scale the next backward pass should use: the scaler's with loss scaling, else 1.
  double loss_scale() const { return loss_scaling() ? scaler_.scale() : 1.0; }

  // The moments [layout.total()] and one tensor's part of them.
  Vector<float, TrainSpace> flat_m() const { return flat_m_; }
  Vector<float, TrainSpace> flat_v() const { return flat_v_; }
  Vector<float, TrainSpace> m(const ParameterSlot& slot) const { return Part(flat_m_, slot); }
  Vector<float, TrainSpace> v(const ParameterSlot& slot) const { return Part(flat_v_, slot); }
  // Updates applied so far (AdamW's bias-correction step; skipped fp16 steps do not count).
  int64_t steps() const { return steps_; }
  void set_steps(int64_t steps) { steps_ = steps; }
  const LossScaler& scaler() const { return scaler_; }
  void RestoreScaler(const LossScalerState& state) { scaler_.Restore(state); }

  // After the backward pass (and any gradient reduction) of a step whose loss was `loss_finite`:
  // the global norm of model.flat_grads(); with loss scaling the scaler's verdict (an overflow
  // skips the update); clipping to max_grad_norm; AdamW at `lr` over the model's flat weights.
  absl::StatusOr<OptimizerStepResult> Step(TrainModel& model, double lr, bool loss_finite);

 private:
  // AdamW writing the rounded weights into the model's working copy as T (bf16 or f16).
  template <class T>
  absl::Status StepAndCast(TrainModel& model, Vector<float, TrainSpace> grads, const kernels::AdamWOptions& adamw);
  static Vector<float, TrainSpace> Part(Vector<float, TrainSpace> flat, const ParameterSlot& slot) {
    return Vector<float, TrainSpace>(flat.data() + slot.offset, slot.numel);
  }
  OptimizerOptions options_;
  Vector<float, TrainSpace> flat_m_, flat_v_;
  int64_t steps_ = 0;
  LossScaler scaler_;
};

}  // namespace openmoe::train

#endif  // OPENMOE_TRAIN_OPTIMIZER_H_
