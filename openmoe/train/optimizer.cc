#include "openmoe/train/optimizer.h"

#include <cmath>
#include <cstring>

#include "kernels/elementwise.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/status_macros.h"

namespace openmoe::train {

using Space = TrainSpace;

double SumOfSquares(Vector<float, Space> flat) {
  double sum_sq = 0;
  Kokkos::parallel_reduce(
      "openmoe::train::GradNorm", Kokkos::RangePolicy<Space>(0, flat.extent(0)),
      KOKKOS_LAMBDA(const int64_t i, double& s) { s += double(flat(i)) * double(flat(i)); }, sum_sq);
  return sum_sq;
}

double GlobalNorm(Vector<float, Space> flat) { return std::sqrt(SumOfSquares(flat)); }

ZeroPartition ZeroPartition::Of(int64_t total, int rank, int size) {
  ZeroPartition p;
  p.total = total, p.rank = rank, p.size = size;
  p.chunk = total / (int64_t(size) * kAlignment) * kAlignment;
  p.begin = int64_t(rank) * p.chunk;
  p.tail_begin = int64_t(size) * p.chunk;
  return p;
}

AdamWOptimizer::AdamWOptimizer(const ParameterLayout& layout, const OptimizerOptions& options, ZeroSharding zero)
    : options_(options), zero_(zero.stage > 0 && zero.comm ? std::move(zero) : ZeroSharding{}), scaler_(options.loss_scaler) {
  partition_ = sharded() ? ZeroPartition::Of(layout.total(), zero_.comm->rank(), zero_.comm->size())
                         : ZeroPartition::Of(layout.total(), 0, 1);
  const int64_t owned = sharded() ? partition_.owned() : layout.total();
  flat_m_ = Vector<float, Space>("adamw.m", owned);
  flat_v_ = Vector<float, Space>("adamw.v", owned);
  if (zero_.stage == 2) grad_shard_ = Vector<float, Space>("zero2.grad_shard", partition_.chunk);
}

namespace {

// 1 / size times x, as the ZeRO-0 gradient hook scales the all-reduced sum (tools/train.cc).
void ScaleBy(const Space& space, Vector<float, Space> x, float factor) {
  Kokkos::parallel_for("train::mean_over_ranks", Kokkos::RangePolicy<Space>(space, 0, x.extent(0)),
                       KOKKOS_LAMBDA(int64_t i) { x(i) *= factor; });
}

}  // namespace

absl::Status AdamWOptimizer::ReduceScatterGradients(TrainModel& model) {
  if (zero_.stage != 2) return absl::FailedPreconditionError("ReduceScatterGradients: ZeRO-2 only");
  const ZeroPartition& p = partition_;
  const Space space;
  const Vector<float, Space> grads = model.flat_grads();
  OPENMOE_RETURN_IF_ERROR(zero_.comm->ReduceScatter(space, Sub(grads, 0, p.size * p.chunk), grad_shard_));
  const Vector<float, Space> tail = Sub(grads, p.tail_begin, p.tail());
  if (p.tail() > 0) OPENMOE_RETURN_IF_ERROR(zero_.comm->AllReduce(space, tail));
  const float inv = 1.0f / float(p.size);
  ScaleBy(space, grad_shard_, inv);
  ScaleBy(space, tail, inv);
  space.fence();
  return absl::OkStatus();
}

absl::Status AdamWOptimizer::GatherGradients(TrainModel& model) {
  if (zero_.stage != 2) return absl::FailedPreconditionError("GatherGradients: ZeRO-2 only");
  const Space space;
  OPENMOE_RETURN_IF_ERROR(zero_.comm->AllGather(space, grad_shard_, Sub(model.flat_grads(), 0, partition_.size * partition_.chunk)));
  space.fence();
  return absl::OkStatus();
}

absl::StatusOr<std::pair<Vector<float, Space>, Vector<float, Space>>> AdamWOptimizer::GatherMoments() const {
  if (!sharded()) return std::make_pair(flat_m_, flat_v_);
  const ZeroPartition& p = partition_;
  const Space space;
  if (p.rank != 0) {
    OPENMOE_RETURN_IF_ERROR(zero_.comm->Send(space, Sub(flat_m_, 0, p.chunk), 0));
    OPENMOE_RETURN_IF_ERROR(zero_.comm->Send(space, Sub(flat_v_, 0, p.chunk), 0));
    return std::make_pair(Vector<float, Space>(), Vector<float, Space>());
  }
  Vector<float, Space> m("adamw.m.gathered", p.total), v("adamw.v.gathered", p.total);
  Kokkos::deep_copy(space, Sub(m, 0, p.chunk), Sub(flat_m_, 0, p.chunk));
  Kokkos::deep_copy(space, Sub(v, 0, p.chunk), Sub(flat_v_, 0, p.chunk));
  Kokkos::deep_copy(space, Sub(m, p.tail_begin, p.tail()), Sub(flat_m_, p.chunk, p.tail()));
  Kokkos::deep_copy(space, Sub(v, p.tail_begin, p.tail()), Sub(flat_v_, p.chunk, p.tail()));
  for (int r = 1; r < p.size; ++r) {
    OPENMOE_RETURN_IF_ERROR(zero_.comm->Recv(space, Sub(m, r * p.chunk, p.chunk), r));
    OPENMOE_RETURN_IF_ERROR(zero_.comm->Recv(space, Sub(v, r * p.chunk, p.chunk), r));
  }
  space.fence();
  return std::make_pair(m, v);
}

absl::Status AdamWOptimizer::SetMoments(Vector<float, Space> full_m, Vector<float, Space> full_v) {
  const ZeroPartition& p = partition_;
  if (int64_t(full_m.extent(0)) != p.total || int64_t(full_v.extent(0)) != p.total) {
    return absl::InvalidArgumentError("SetMoments: the moments must cover the whole layout");
  }
  const Space space;
  if (!sharded()) {
    Kokkos::deep_copy(space, flat_m_, full_m);
    Kokkos::deep_copy(space, flat_v_, full_v);
  } else {
    Kokkos::deep_copy(space, Sub(flat_m_, 0, p.chunk), Sub(full_m, p.begin, p.chunk));
    Kokkos::deep_copy(space, Sub(flat_v_, 0, p.chunk), Sub(full_v, p.begin, p.chunk));
    Kokkos::deep_copy(space, Sub(flat_m_, p.chunk, p.tail()), Sub(full_m, p.tail_begin, p.tail()));
    Kokkos::deep_copy(space, Sub(flat_v_, p.chunk, p.tail()), Sub(full_v, p.tail_begin, p.tail()));
  }
  space.fence();
  return absl::OkStatus();
}

// ZeRO-1/2: the norm of the whole mean gradient, AdamW on this rank's chunk and the replicated
// tail only, then the chunks all-gathered into every rank's flat_params.
absl::StatusOr<OptimizerStepResult> AdamWOptimizer::ShardedStep(TrainModel& model, double lr, bool loss_finite) {
  const ZeroPartition& p = partition_;
  const Space space;
  OptimizerStepResult result;
  const Vector<float, Space> grads = model.flat_grads(), params = model.flat_params();
  // The gradient of the chunk: ZeRO-2 its reduced shard, ZeRO-1 that part of the all-reduced one.
  const Vector<float, Space> g_chunk = zero_.stage == 2 ? grad_shard_ : Sub(grads, p.begin, p.chunk);
  const Vector<float, Space> g_tail = Sub(grads, p.tail_begin, p.tail());
  if (zero_.stage == 1) {
    result.grad_norm = GlobalNorm(grads);  // the whole mean gradient is here: as ZeRO-0
  } else {
    // Every rank's chunk sum of squares (double, all-gathered as its 64 bits), summed in rank
    // order, plus the replicated tail's: the same double on every rank, so an inf / NaN anywhere
    // (fp16 overflow) gives every rank the same verdict and all skip the step together.
    Kokkos::View<int64_t*, Space> mine("zero2.sum_sq", 1), all("zero2.sums_sq", p.size);
    const double local = SumOfSquares(g_chunk);
    int64_t bits = 0;
    std::memcpy(&bits, &local, sizeof bits);
    Kokkos::deep_copy(space, mine, bits);
    OPENMOE_RETURN_IF_ERROR(zero_.comm->AllGather(space, mine, all));
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), all);
    double sum_sq = 0;
    for (int r = 0; r < p.size; ++r) {
      double part = 0;
      std::memcpy(&part, &host(r), sizeof part);
      sum_sq += part;
    }
    result.grad_norm = std::sqrt(sum_sq + SumOfSquares(g_tail));
  }
  result.loss_scale = loss_scale();
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
  if (clip != 1.0f) {
    OPENMOE_RETURN_IF_ERROR(kernels::Scale<Space>(space, g_chunk, clip));
    OPENMOE_RETURN_IF_ERROR(kernels::Scale<Space>(space, g_tail, clip));
  }
  const Vector<float, Space> p_chunk = Sub(params, p.begin, p.chunk);
  if (p.chunk > 0) {
    OPENMOE_RETURN_IF_ERROR(kernels::AdamWStep<Space>(space, p_chunk, g_chunk, Sub(flat_m_, 0, p.chunk),
                                                      Sub(flat_v_, 0, p.chunk), steps_, adamw));
  }
  if (p.tail() > 0) {
    OPENMOE_RETURN_IF_ERROR(kernels::AdamWStep<Space>(space, Sub(params, p.tail_begin, p.tail()), g_tail,
                                                      Sub(flat_m_, p.chunk, p.tail()), Sub(flat_v_, p.chunk, p.tail()),
                                                      steps_, adamw));
  }
  // Every rank's updated chunk into every rank's weights. The send buffer is the chunk's gradient,
  // consumed by now (the all-gather must not read from the buffer it writes).
  if (p.chunk > 0) {
    Kokkos::deep_copy(space, g_chunk, p_chunk);
    OPENMOE_RETURN_IF_ERROR(zero_.comm->AllGather(space, g_chunk, Sub(params, 0, p.size * p.chunk)));
  }
  space.fence();
  // The 16-bit copy: converted again from the gathered masters by the next forward pass.
  model.InvalidateWorkingCopy();
  return result;
}

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
  if (sharded()) return ShardedStep(model, lr, loss_finite);
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
