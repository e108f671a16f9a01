#include "openmoe/train/optimizer.h"

#include <algorithm>
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

AdamWOptimizer::AdamWOptimizer(const ParameterLayout& layout, const OptimizerOptions& options, ZeroSharding zero,
                               ExpertGroups experts, int64_t expert_begin)
    : options_(options), zero_(zero.stage > 0 && zero.comm ? std::move(zero) : ZeroSharding{}), scaler_(options.loss_scaler) {
  const int64_t total = layout.total();
  const bool split = experts.ep && expert_begin >= 0 && expert_begin < total;
  const auto part = [&](int64_t begin, int64_t size, std::shared_ptr<comm::Communicator<Space>> comm) {
    Range p;
    p.begin = begin, p.size = size;
    p.comm = sharded() ? std::move(comm) : nullptr;
    p.partition = p.comm ? ZeroPartition::Of(size, p.comm->rank(), p.comm->size()) : ZeroPartition::Of(size, 0, 1);
    return p;
  };
  if (split) {
    ep_ = experts.ep;
    parts_.push_back(part(0, expert_begin, zero_.comm));
    parts_.push_back(part(expert_begin, total - expert_begin, experts.replicas ? experts.replicas : zero_.comm));
    parts_.back().per_ep_position = true;
  } else {
    parts_.push_back(part(0, total, zero_.comm));
  }
  int64_t owned = 0;
  for (Range& p : parts_) {
    p.moment_offset = owned;
    owned += p.partition.owned();
    if (zero_.stage == 2) p.grad_shard = Vector<float, Space>("zero2.grad_shard", p.partition.chunk);
  }
  if (sharded()) mean_scale_ = 1.0f / float(zero_.comm->size());
  flat_m_ = Vector<float, Space>("adamw.m", owned);
  flat_v_ = Vector<float, Space>("adamw.v", owned);
}

namespace {

// 1 / size times x, as the ZeRO-0 gradient hook scales the all-reduced sum (tools/train.cc).
void ScaleBy(const Space& space, Vector<float, Space> x, float factor) {
  Kokkos::parallel_for("train::mean_over_ranks", Kokkos::RangePolicy<Space>(space, 0, x.extent(0)),
                       KOKKOS_LAMBDA(int64_t i) { x(i) *= factor; });
}

// The sum over `comm`'s ranks of each rank's `value`, added in rank order (the doubles travel as
// their 64 bits): the same double on every rank.
absl::StatusOr<double> SumOverRanks(comm::Communicator<Space>& comm, double value) {
  const Space space;
  Kokkos::View<int64_t*, Space> mine("sum.mine", 1), all("sum.all", comm.size());
  int64_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  Kokkos::deep_copy(space, mine, bits);
  OPENMOE_RETURN_IF_ERROR(comm.AllGather(space, mine, all));
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), all);
  double sum = 0;
  for (int r = 0; r < comm.size(); ++r) {
    double part = 0;
    std::memcpy(&part, &host(r), sizeof part);
    sum += part;
  }
  return sum;
}

}  // namespace

absl::Status AdamWOptimizer::ReduceScatterGradients(TrainModel& model) {
  if (zero_.stage != 2) return absl::FailedPreconditionError("ReduceScatterGradients: ZeRO-2 only");
  const Space space;
  const Vector<float, Space> grads = model.flat_grads();
  for (const Range& part : parts_) {
    const ZeroPartition& p = part.partition;
    OPENMOE_RETURN_IF_ERROR(part.comm->ReduceScatter(space, Sub(grads, part.begin, p.size * p.chunk), part.grad_shard));
    const Vector<float, Space> tail = Sub(grads, part.begin + p.tail_begin, p.tail());
    if (p.tail() > 0) OPENMOE_RETURN_IF_ERROR(part.comm->AllReduce(space, tail));
    ScaleBy(space, part.grad_shard, mean_scale_);
    ScaleBy(space, tail, mean_scale_);
  }
  space.fence();
  return absl::OkStatus();
}

absl::Status AdamWOptimizer::GatherGradients(TrainModel& model) {
  if (zero_.stage != 2) return absl::FailedPreconditionError("GatherGradients: ZeRO-2 only");
  const Space space;
  for (const Range& part : parts_) {
    const ZeroPartition& p = part.partition;
    OPENMOE_RETURN_IF_ERROR(part.comm->AllGather(space, part.grad_shard, Sub(model.flat_grads(), part.begin, p.size * p.chunk)));
  }
  space.fence();
  return absl::OkStatus();
}

absl::StatusOr<std::pair<Vector<float, Space>, Vector<float, Space>>> AdamWOptimizer::GatherMoments() const {
  if (!sharded()) return std::make_pair(flat_m_, flat_v_);
  const Space space;
  const int64_t total = parts_.back().begin + parts_.back().size;
  Vector<float, Space> m("adamw.m.gathered", total), v("adamw.v.gathered", total);
  for (const Range& part : parts_) {
    const ZeroPartition& p = part.partition;
    const int64_t o = part.moment_offset, b = part.begin;
    Kokkos::deep_copy(space, Sub(m, b + p.begin, p.chunk), Sub(flat_m_, o, p.chunk));
    Kokkos::deep_copy(space, Sub(v, b + p.begin, p.chunk), Sub(flat_v_, o, p.chunk));
    Kokkos::deep_copy(space, Sub(m, b + p.tail_begin, p.tail()), Sub(flat_m_, o + p.chunk, p.tail()));
    Kokkos::deep_copy(space, Sub(v, b + p.tail_begin, p.tail()), Sub(flat_v_, o + p.chunk, p.tail()));
    if (p.rank != 0) {
      OPENMOE_RETURN_IF_ERROR(part.comm->Send(space, Sub(flat_m_, o, p.chunk), 0));
      OPENMOE_RETURN_IF_ERROR(part.comm->Send(space, Sub(flat_v_, o, p.chunk), 0));
      continue;
    }
    for (int r = 1; r < p.size; ++r) {
      OPENMOE_RETURN_IF_ERROR(part.comm->Recv(space, Sub(m, b + r * p.chunk, p.chunk), r));
      OPENMOE_RETURN_IF_ERROR(part.comm->Recv(space, Sub(v, b + r * p.chunk, p.chunk), r));
    }
  }
  space.fence();
  return std::make_pair(m, v);
}

absl::Status AdamWOptimizer::SetMoments(Vector<float, Space> full_m, Vector<float, Space> full_v) {
  const int64_t total = parts_.back().begin + parts_.back().size;
  if (int64_t(full_m.extent(0)) != total || int64_t(full_v.extent(0)) != total) {
    return absl::InvalidArgumentError("SetMoments: the moments must cover the whole layout");
  }
  const Space space;
  if (!sharded()) {
    Kokkos::deep_copy(space, flat_m_, full_m);
    Kokkos::deep_copy(space, flat_v_, full_v);
  } else {
    for (const Range& part : parts_) {
      const ZeroPartition& p = part.partition;
      const int64_t o = part.moment_offset, b = part.begin;
      Kokkos::deep_copy(space, Sub(flat_m_, o, p.chunk), Sub(full_m, b + p.begin, p.chunk));
      Kokkos::deep_copy(space, Sub(flat_v_, o, p.chunk), Sub(full_v, b + p.begin, p.chunk));
      Kokkos::deep_copy(space, Sub(flat_m_, o + p.chunk, p.tail()), Sub(full_m, b + p.tail_begin, p.tail()));
      Kokkos::deep_copy(space, Sub(flat_v_, o + p.chunk, p.tail()), Sub(full_v, b + p.tail_begin, p.tail()));
    }
  }
  space.fence();
  return absl::OkStatus();
}

std::vector<AdamWOptimizer::MomentPiece> AdamWOptimizer::OwnedMoments(int64_t begin, int64_t end) const {
  std::vector<MomentPiece> pieces;
  const auto add = [&](int64_t lo, int64_t hi, int64_t moment_at_lo, bool tail) {  // [lo, hi) in layout coordinates
    const int64_t b = std::max(lo, begin), e = std::min(hi, end);
    if (b < e) pieces.push_back({b, moment_at_lo + (b - lo), e - b, tail});
  };
  for (const Range& part : parts_) {
    const ZeroPartition& p = part.partition;
    add(part.begin + p.begin, part.begin + p.begin + p.chunk, part.moment_offset, false);
    add(part.begin + p.tail_begin, part.begin + part.size, part.moment_offset + p.chunk, true);
  }
  return pieces;
}

absl::StatusOr<double> AdamWOptimizer::GradientNorm(const TrainModel& model) const {
  const Vector<float, Space> grads = model.flat_grads();
  // Without sharded experts and ZeRO-2 the whole mean gradient is here: one reduction, as ZeRO-0.
  if (!sharded_experts() && zero_.stage != 2 && !pipeline_) return GlobalNorm(grads);
  double sum_sq = 0;
  for (const Range& part : parts_) {
    const ZeroPartition& p = part.partition;
    double part_sq = 0;
    if (zero_.stage == 2) {
      // Every rank's chunk sum of squares, summed in rank order, plus the replicated tail's: the
      // same double on every rank, so an inf / NaN anywhere (fp16 overflow) gives every rank the
      // same verdict and all skip the step together.
      OPENMOE_ASSIGN_OR_RETURN(part_sq, SumOverRanks(*part.comm, SumOfSquares(part.grad_shard)));
      part_sq += SumOfSquares(Sub(grads, part.begin + p.tail_begin, p.tail()));
    } else {
      part_sq = SumOfSquares(Sub(grads, part.begin, part.size));
    }
    if (part.per_ep_position) {  // every expert: the EP group's parts
      OPENMOE_ASSIGN_OR_RETURN(part_sq, SumOverRanks(*ep_, part_sq));
    }
    sum_sq += part_sq;
  }
  if (pipeline_) {  // every stage's parameters
    OPENMOE_ASSIGN_OR_RETURN(sum_sq, SumOverRanks(*pipeline_, sum_sq));
  }
  return std::sqrt(sum_sq);
}

// ZeRO-1/2, after Step's norm and clipping factor: AdamW on this rank's chunk and the replicated
// tail of each part only, then each part's chunks all-gathered into every rank's flat_params.
absl::Status AdamWOptimizer::ShardedUpdate(TrainModel& model, float clip, const kernels::AdamWOptions& adamw) {
  const Space space;
  const Vector<float, Space> grads = model.flat_grads(), params = model.flat_params();
  for (const Range& part : parts_) {
    const ZeroPartition& p = part.partition;
    const int64_t o = part.moment_offset, b = part.begin;
    // The gradient of the chunk: ZeRO-2 its reduced shard, ZeRO-1 that part of the all-reduced one.
    const Vector<float, Space> g_chunk = zero_.stage == 2 ? part.grad_shard : Sub(grads, b + p.begin, p.chunk);
    const Vector<float, Space> g_tail = Sub(grads, b + p.tail_begin, p.tail());
    if (clip != 1.0f) {
      OPENMOE_RETURN_IF_ERROR(kernels::Scale<Space>(space, g_chunk, clip));
      OPENMOE_RETURN_IF_ERROR(kernels::Scale<Space>(space, g_tail, clip));
    }
    const Vector<float, Space> p_chunk = Sub(params, b + p.begin, p.chunk);
    if (p.chunk > 0) {
      OPENMOE_RETURN_IF_ERROR(kernels::AdamWStep<Space>(space, p_chunk, g_chunk, Sub(flat_m_, o, p.chunk),
                                                        Sub(flat_v_, o, p.chunk), steps_, adamw));
    }
    if (p.tail() > 0) {
      OPENMOE_RETURN_IF_ERROR(kernels::AdamWStep<Space>(space, Sub(params, b + p.tail_begin, p.tail()), g_tail,
                                                        Sub(flat_m_, o + p.chunk, p.tail()),
                                                        Sub(flat_v_, o + p.chunk, p.tail()), steps_, adamw));
    }
    // Every rank's updated chunk into every rank's weights. The send buffer is the chunk's
    // gradient, consumed by now (the all-gather must not read from the buffer it writes).
    if (p.chunk > 0) {
      Kokkos::deep_copy(space, g_chunk, p_chunk);
      OPENMOE_RETURN_IF_ERROR(part.comm->AllGather(space, g_chunk, Sub(params, b, p.size * p.chunk)));
    }
  }
  space.fence();
  // The 16-bit copy: converted again from the gathered masters by the next forward pass.
  model.InvalidateWorkingCopy();
  return absl::OkStatus();
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
  OptimizerStepResult result;
  const Vector<float, Space> grads = model.flat_grads();
  OPENMOE_ASSIGN_OR_RETURN(result.grad_norm, GradientNorm(model));
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
  if (sharded()) {
    OPENMOE_RETURN_IF_ERROR(ShardedUpdate(model, clip, adamw));
    return result;
  }
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
