#include "openmoe/train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
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
  const int64_t total = parts_.back().begin + parts_.back().size;
  Vector<float, Space> m("adamw.m.gathered", total), v("adamw.v.gathered", total);
  OPENMOE_RETURN_IF_ERROR(GatherRange(flat_m_, 0, total, m));
  OPENMOE_RETURN_IF_ERROR(GatherRange(flat_v_, 0, total, v));
  return std::make_pair(m, v);
}

absl::Status AdamWOptimizer::GatherRange(Vector<float, Space> owned, int64_t begin, int64_t end,
                                         Vector<float, Space> out) const {
  const Space space;
  for (const MomentPiece& piece : OwnedMoments(begin, end)) {
    Kokkos::deep_copy(space, Sub(out, piece.layout - begin, piece.count), Sub(owned, piece.moment, piece.count));
  }
  for (const Range& part : parts_) {
    const ZeroPartition& p = part.partition;
    // Rank r's chunk within the range, [lo, hi) in layout coordinates (empty: no message). Every
    // rank derives the same overlaps, so sends and receives match.
    const auto chunk_of = [&](int r) {
      const int64_t chunk_begin = part.begin + r * p.chunk;
      return std::make_pair(std::max(begin, chunk_begin), std::min(end, chunk_begin + p.chunk));
    };
    if (p.rank != 0) {  // this rank's chunk piece, just copied into `out`, to rank 0
      const auto [lo, hi] = chunk_of(p.rank);
      if (lo < hi) OPENMOE_RETURN_IF_ERROR(part.comm->Send(space, Sub(out, lo - begin, hi - lo), 0));
      continue;
    }
    for (int r = 1; r < p.size; ++r) {
      const auto [lo, hi] = chunk_of(r);
      if (lo < hi) OPENMOE_RETURN_IF_ERROR(part.comm->Recv(space, Sub(out, lo - begin, hi - lo), r));
    }
  }
  space.fence();
  return absl::OkStatus();
}

std::vector<ZeroPartition> AdamWOptimizer::partitions() const {
  std::vector<ZeroPartition> all;
  for (const Range& part : parts_) all.push_back(part.partition);
  return all;
}

absl::Status AdamWOptimizer::ShardMasters(TrainModel& model) const {
  if (!shards_masters()) return absl::OkStatus();
  const int64_t total = parts_.back().begin + parts_.back().size;
  if (model.layout().total() != total) {
    return absl::InvalidArgumentError("ShardMasters: the model's layout is not the optimizer's");
  }
  std::vector<TrainModel::MasterPiece> pieces;
  for (const MomentPiece& piece : OwnedMoments(0, total)) pieces.push_back({piece.layout, piece.moment, piece.count});
  return model.ShardMasters(pieces);
}

absl::Status AdamWOptimizer::CheckMasters(const TrainModel& model) const {
  if (model.masters_sharded() != shards_masters()) {
    return absl::FailedPreconditionError(
        shards_masters() ? absl::StrCat("AdamW: ZeRO-", zero_.stage, " of a 16-bit run keeps only this rank's fp32 "
                                        "masters, but the model's are whole (call AdamWOptimizer::ShardMasters first)")
                         : std::string("AdamW: the model's fp32 masters are sharded, but this optimizer updates whole ones"));
  }
  if (!model.masters_sharded()) return absl::OkStatus();
  const int64_t total = parts_.back().begin + parts_.back().size;
  const std::vector<MomentPiece> mine = OwnedMoments(0, total);
  const std::vector<TrainModel::MasterPiece> kept = model.OwnedMasters(0, total);
  bool same = mine.size() == kept.size() && model.layout().total() == total;
  for (size_t i = 0; same && i < mine.size(); ++i) {
    same = mine[i].layout == kept[i].layout && mine[i].moment == kept[i].master && mine[i].count == kept[i].count;
  }
  if (!same) return absl::FailedPreconditionError("AdamW: the model keeps other fp32 master pieces than this rank owns");
  return absl::OkStatus();
}

absl::StatusOr<Vector<float, Space>> AdamWOptimizer::GatherMasters(const TrainModel& model, int64_t begin,
                                                                   int64_t end) const {
  if (begin < 0 || begin > end || end > model.layout().total()) {
    return absl::InvalidArgumentError(absl::StrCat("GatherMasters: [", begin, ", ", end, ") is not a range of the layout"));
  }
  if (!model.masters_sharded()) return Sub(model.flat_params(), begin, end - begin);
  OPENMOE_RETURN_IF_ERROR(CheckMasters(model));
  Vector<float, Space> whole("masters.gathered", end - begin);
  OPENMOE_RETURN_IF_ERROR(GatherRange(model.flat_masters(), begin, end, whole));
  return whole;
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
// tail of each part only, then each part's updated chunks all-gathered into every rank's model.
absl::Status AdamWOptimizer::ShardedUpdate(TrainModel& model, float clip, const kernels::AdamWOptions& adamw) {
  const Space space;
  const Vector<float, Space> grads = model.flat_grads();
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
    // This rank's [chunk | tail] of the part: moments (and sharded masters) at o and o + chunk.
    OPENMOE_RETURN_IF_ERROR(UpdateOwned(model, b + p.begin, o, g_chunk, adamw));
    OPENMOE_RETURN_IF_ERROR(UpdateOwned(model, b + p.tail_begin, o + p.chunk, g_tail, adamw));
    if (p.chunk > 0) OPENMOE_RETURN_IF_ERROR(GatherChunks(model, part, g_chunk));
  }
  space.fence();
  return absl::OkStatus();
}

absl::Status AdamWOptimizer::UpdateOwned(TrainModel& model, int64_t layout, int64_t moment, Vector<float, Space> grad,
                                         const kernels::AdamWOptions& adamw) {
  const int64_t n = grad.extent(0);
  if (n == 0) return absl::OkStatus();
  const Vector<float, Space> m = Sub(flat_m_, moment, n), v = Sub(flat_v_, moment, n);
  if (!model.masters_sharded()) {
    return kernels::AdamWStep<Space>(Space(), Sub(model.flat_params(), layout, n), grad, m, v, steps_, adamw);
  }
  return StepAndCast(model, Sub(model.flat_masters(), moment, n), grad, m, v, layout, adamw);
}

absl::Status AdamWOptimizer::GatherChunks(TrainModel& model, const Range& part, Vector<float, Space> send) const {
  const Space space;
  const ZeroPartition& p = part.partition;
  const int64_t mine = part.begin + p.begin, n = p.chunk;  // this rank's chunk [mine, mine + n)
  if (!model.masters_sharded()) {  // fp32: the masters are the weights
    const Vector<float, Space> masters = model.flat_params();
    Kokkos::deep_copy(space, send, Sub(masters, mine, n));
    return part.comm->AllGather(space, send, Sub(masters, part.begin, p.size * n));
  }
  // 16-bit: the working copy's chunks (the first half of the gradient chunk's bytes sends).
  const Vector<uint16_t, Space> working = model.flat_working();
  const Vector<uint16_t, Space> send16(reinterpret_cast<uint16_t*>(send.data()), n);
  Kokkos::deep_copy(space, send16, Vector<uint16_t, Space>(working.data() + mine, n));
  const comm::DType dtype =
      options_.compute_dtype == TrainModel::ComputeDtype::kBf16 ? comm::DType::kBf16 : comm::DType::kF16;
  return part.comm->AllGather(space, comm::ConstBuffer(send16.data(), n, dtype),
                              comm::Buffer{working.data() + part.begin, p.size * n, dtype});
}

absl::Status AdamWOptimizer::StepAndCast(TrainModel& model, Vector<float, Space> masters, Vector<float, Space> grad,
                                         Vector<float, Space> m, Vector<float, Space> v, int64_t working_at,
                                         const kernels::AdamWOptions& adamw) {
  uint16_t* const bits = model.flat_working().data() + working_at;
  const int64_t n = masters.extent(0);
  if (options_.compute_dtype == TrainModel::ComputeDtype::kBf16) {
    return kernels::AdamWStepAndCast<bf16, Space>(Space(), masters, grad, m, v, steps_, adamw,
                                                  Vector<bf16, Space>(reinterpret_cast<bf16*>(bits), n));
  }
  return kernels::AdamWStepAndCast<f16, Space>(Space(), masters, grad, m, v, steps_, adamw,
                                               Vector<f16, Space>(reinterpret_cast<f16*>(bits), n));
}

absl::StatusOr<OptimizerStepResult> AdamWOptimizer::Step(TrainModel& model, double lr, bool loss_finite) {
  if (options_.compute_dtype != model.compute_dtype()) {  // the working copy holds the model's type
    return absl::FailedPreconditionError("AdamW: the optimizer's compute dtype differs from the model's");
  }
  OPENMOE_RETURN_IF_ERROR(CheckMasters(model));
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
  OPENMOE_RETURN_IF_ERROR(StepAndCast(model, model.flat_params(), grads, flat_m_, flat_v_, 0, adamw));
  model.MarkWorkingCopyCurrent();
  return result;
}

}  // namespace openmoe::train
