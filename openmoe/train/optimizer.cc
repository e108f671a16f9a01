#include "openmoe/train/optimizer.h"

#include <cmath>

#include "kernels/elementwise.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/status_macros.h"

namespace openmoe::train {

using Space = TrainSpace;

double GlobalNorm(Vector<float, Space> flat) {
  double sum_sq = 0;
  Kokkos::parallel_reduce(
      "openmoe::train::GradNorm", Kokkos::RangePolicy<Space>(0, flat.extent(0)),
      KOKKOS_LAMBDA(const int64_t i, double& s) { s += double(flat(i)) * double(flat(i)); }, sum_sq);
  return std::sqrt(sum_sq);
}

AdamWOptimizer::AdamWOptimizer(const ParameterLayout& layout, const OptimizerOptions& options)
    : options_(options),
      flat_m_("adamw.m", layout.total()),
      flat_v_("adamw.v", layout.total()),
      scaler_(options.loss_scaler) {}

template <class T>
absl::Status AdamWOptimizer::StepAndCast(TrainModel& model, Vector<float, Space> grads, const kernels::AdamWOptions& adamw) {
  Vector<uint16_t, Space> bits = model.flat_working();
  return kernels::AdamWStepAndCast<T, Space>(Space(), model.flat_params(), grads, flat_m_, flat_v_, steps_, adamw,
                                             Vector<T, Space>(reinterpret_cast<T*>(bits.data()), bits.extent(0)));
}

absl::StatusOr<OptimizerStepResult> AdamWOptimizer::Step(TrainModel& model, double lr, bool loss_finite) {
  if (options_.compute_dtype != model.compute_dtype()) {  // the working copy holds the model's type
    return absl::FailedPreconditionError("AdamW: the optimizer's compute dtype differs from the model's");
  }
  OptimizerStepResult result;
  const Vector<float, Space> grads = model.flat_grads();
  result.grad_norm = GlobalNorm(grads);
  result.loss_scale = loss_scale();
  // fp16: an overflow (inf / NaN loss or gradients at this scale) skips the update; one at the
  // minimum scale cannot be backed off from.
  const bool at_minimum = scaler_.AtMinimum();
  result.applied = !loss_scaling() || scaler_.Update(loss_finite && std::isfinite(result.grad_norm));
  if (!result.applied) {
    result.overflow_at_minimum_scale = at_minimum;
    return result;
  }
  const double max_norm = options_.max_grad_norm;
  const float clip = max_norm > 0 && result.grad_norm > max_norm ? float(max_norm / result.grad_norm) : 1.0f;
  kernels::AdamWOptions adamw = options_.adamw;
  adamw.lr = lr;
  ++steps_;
  // Clipping and AdamW over the flat buffers: one kernel each for every parameter; mixed
  // precision also refreshes the 16-bit working copy in AdamW's pass.
  if (clip != 1.0f) OPENMOE_RETURN_IF_ERROR(kernels::Scale<Space>(Space(), grads, clip));
  using Dtype = TrainModel::ComputeDtype;
  if (options_.compute_dtype == Dtype::kFp32) {
    OPENMOE_RETURN_IF_ERROR(kernels::AdamWStep<Space>(Space(), model.flat_params(), grads, flat_m_, flat_v_, steps_, adamw));
    return result;
  }
  OPENMOE_RETURN_IF_ERROR(options_.compute_dtype == Dtype::kBf16 ? StepAndCast<bf16>(model, grads, adamw)
                                                                  : StepAndCast<f16>(model, grads, adamw));
  model.MarkWorkingCopyCurrent();
  return result;
}

}  // namespace openmoe::train
