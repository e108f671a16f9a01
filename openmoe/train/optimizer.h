// File: openmoe/train/optimizer.h
// The optimizer of a training run, over the model's flat buffers (TrainableModel::flat_masters /
// flat_grads / layout): AdamW (kernels/adamw.h) with float32 moments in the same layout, clipping
// by the global gradient norm, and for fp16 the dynamic loss scaler that skips overflowing steps.
// In a bf16 / fp16 run AdamW also writes the rounded weights into the model's 16-bit working copy
// (kernels::AdamWStepAndCast), so the next step skips its own conversion.
//
//   AdamWOptimizer opt(model.layout(), options);
//   OPENMOE_RETURN_IF_ERROR(opt.ShardMasters(model));  // ZeRO-1/2 of a 16-bit run; else nothing
//   model.set_loss_scale(float(opt.loss_scale()));  ... model.ForwardBackward ... (reduce gradients)
//   OPENMOE_ASSIGN_OR_RETURN(OptimizerStepResult r, opt.Step(model, lr, std::isfinite(loss.total)));
//
// ZeRO (ZeroSharding, stage 1 or 2 over the data-parallel communicator): the flat layout is split
// into ZeroPartition chunks; a rank keeps AdamW moments only for what it owns (its chunk plus the
// small replicated tail; with sharded experts, that of the dense range and of the expert range)
// and updates only those weights. Stage 1 expects the gradient already all-reduced (mean); stage 2
// reduce-scatters it (ReduceScatterGradients) and all-reduces the shards' sums of squares for the
// global norm. Per element the arithmetic is ZeRO-0's, so weights and moments equal ZeRO-0's bit
// for bit when the clipping factor does. The fp32 master weights:
//  - bf16 / fp16 runs: the model keeps only the masters this rank owns (ShardMasters: the same
//    pieces as the moments, at the same offsets, so TrainableModel::flat_masters() is laid out as
//    flat_m()); AdamW updates them and writes their 16-bit rounding into the owned positions of
//    the model's whole working copy, whose chunks are then all-gathered (16-bit: half the bytes of
//    an fp32 all-gather). That working copy equals the rounding of ZeRO-0's whole masters bit for
//    bit (rounding is per element). Whole tensors of the masters (checkpoints, dumps): GatherMasters.
//  - fp32 runs: the masters are the weights the forward pass computes with, so they stay whole;
//    the updated fp32 chunks are all-gathered into every rank's flat_params.
// Still whole on every rank: ZeRO-2's fp32 gradient buffer (the backward pass writes it whole and
// the reduce-scatter reads it) and the 16-bit working copy.
#ifndef OPENMOE_TRAIN_OPTIMIZER_H_
#define OPENMOE_TRAIN_OPTIMIZER_H_

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include <Kokkos_Core.hpp>

#include "absl/status/statusor.h"
#include "kernels/adamw.h"
#include "openmoe/comm/communicator.h"
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
// sum g^2 in double (GlobalNorm before its square root).
double SumOfSquares(Vector<float, TrainSpace> flat);

// ZeRO over the data-parallel ranks of `comm`: stage 1 shards the optimizer state (AdamW moments,
// the update of the fp32 master weights and, in bf16 / fp16 runs, the masters themselves), stage 2
// also the gradient (reduce-scatter instead of all-reduce). Stage 0 (or no communicator):
// everything replicated.
struct ZeroSharding {
  int stage = 0;
  std::shared_ptr<comm::Communicator<TrainSpace>> comm;
};

// Expert parallelism with sharded experts (the model stores only its experts, in the flat range
// [TrainableModel::expert_begin(), total): TrainingTable): the groups of ranks that range is
// reduced over. The dense range [0, expert_begin()) stays with ZeroSharding's communicator.
//  - replicas: the ranks storing the same experts (ep_zero's k copies; one rank under `ep`): ZeRO
//    1/2 shard the expert range's optimizer state (and stage 2 its gradient) over them;
//  - ep: the ranks storing the other experts (the EP group): the gradient norm sums their parts.
// The expert range's gradient mean divides by the same data-parallel size as the dense one
// (ZeroSharding's communicator): each owner's expert gradient is the sum over its EP group, and
// the replicas' sum makes it the sum over every data-parallel rank.
struct ExpertGroups {
  std::shared_ptr<comm::Communicator<TrainSpace>> replicas, ep;
};

// Which part of the flat layout [0, total) rank `rank` of `size` owns under ZeRO: the chunk
// [begin, begin + chunk) with chunk = floor(total / (size * kAlignment)) * kAlignment elements
// (every chunk starts at a multiple of kAlignment = 64 floats, 256 bytes) and begin = rank * chunk;
// the tail [size * chunk, total) (fewer than size * kAlignment elements) is owned by every rank,
// replicated, so that the collectives need no padding. Every rank derives the same split from
// (total, size) alone.
struct ZeroPartition {
  static constexpr int64_t kAlignment = 64;
  int64_t total = 0, chunk = 0, begin = 0, tail_begin = 0;
  int rank = 0, size = 1;
  static ZeroPartition Of(int64_t total, int rank, int size);
  int64_t tail() const { return total - tail_begin; }
  int64_t owned() const { return chunk + tail(); }  // moments (16-bit runs: masters) kept by each rank
};

class AdamWOptimizer {
 public:
  AdamWOptimizer() = default;
  // Zero moments for `layout`; with ZeRO (zero.stage 1 or 2 and a communicator) only for this
  // rank's ZeroPartition of it. `experts` with `expert_begin` (the model's expert_begin()) for a
  // model storing only its experts: the dense range [0, expert_begin) and the expert range
  // [expert_begin, total) are then two parts, each with its own ZeRO partition over its own ranks
  // (zero.comm / experts.replicas), and the gradient norm adds the EP group's expert parts.
  AdamWOptimizer(const ParameterLayout& layout, const OptimizerOptions& options, ZeroSharding zero = {},
                 ExpertGroups experts = {}, int64_t expert_begin = -1);

  // 0: replicated; 1 or 2: ZeRO stage (partition() says what this rank owns).
  int zero_stage() const { return zero_.stage; }
  bool sharded() const { return zero_.stage > 0; }
  // The dense part's partition (the whole layout's without sharded experts).
  const ZeroPartition& partition() const { return parts_.front().partition; }
  // Every part's partition: the dense range's, then (sharded experts) the expert range's.
  std::vector<ZeroPartition> partitions() const;
  // Whether the model stores only its experts (two parts: dense and experts).
  bool sharded_experts() const { return parts_.size() > 1; }
  // A pipeline stage's optimizer: the gradient norm adds every stage's sum of squares over
  // `pipeline` (the ranks of this data index in every stage), so all stages clip alike.
  void set_pipeline(std::shared_ptr<comm::Communicator<TrainSpace>> pipeline) { pipeline_ = std::move(pipeline); }

  const OptimizerOptions& options() const { return options_; }
  bool loss_scaling() const { return options_.compute_dtype == TrainModel::ComputeDtype::kFp16; }
  // The scale the next backward pass should use: the scaler's with loss scaling, else 1.
  double loss_scale() const { return loss_scaling() ? scaler_.scale() : 1.0; }

  // Whether the model keeps only this rank's fp32 masters: ZeRO-1/2 of a bf16 / fp16 run.
  bool shards_masters() const { return sharded() && options_.compute_dtype != TrainModel::ComputeDtype::kFp32; }
  // With shards_masters() (else nothing): the model keeps only the masters this rank updates,
  // OwnedMoments(0, total) at the moments' offsets (TrainableModel::ShardMasters). Call it once,
  // before the first Step (which refuses a model whose masters are not as this optimizer expects).
  absl::Status ShardMasters(TrainModel& model) const;
  // The fp32 master weights of the layout range [begin, end) (e.g. one tensor's slot), whole
  // [end - begin]. Whole masters: a view into model.flat_params(). Sharded (collective over every
  // part's ranks whose chunks overlap the range, so every rank calls it for the same ranges): each
  // part's pieces go to rank 0 of the part's communicator, where that part of the range is
  // complete (the dense part on the data-parallel rank 0, the expert part on each EP group
  // position's first replica); elsewhere it holds only this rank's pieces.
  absl::StatusOr<Vector<float, TrainSpace>> GatherMasters(const TrainModel& model, int64_t begin, int64_t end) const;

  // The moments [layout.total()] and one tensor's part of them. Unsharded only: under ZeRO
  // flat_m / flat_v are this rank's [chunk | tail] of each part; use GatherMoments.
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

  // ZeRO-2, after the backward pass (instead of the all-reduce; collective): this rank's chunk of
  // the mean over ranks of model.flat_grads() into its gradient shard, the replicated tail
  // all-reduced (mean) in place. model.flat_grads() outside the tail is left unreduced.
  absl::Status ReduceScatterGradients(TrainModel& model);
  // ZeRO-2 (collective): the reduced gradient shards all-gathered into model.flat_grads(), so that
  // it holds the whole mean gradient (for --dump_step_state); the step still reads its shard.
  absl::Status GatherGradients(TrainModel& model);

  // The whole moments [total] in the flat layout. Unsharded: the optimizer's own buffers. Under
  // ZeRO (collective over every part's ranks): each part's chunks go to rank 0 of the part's
  // communicator, where that part of the result is complete (the dense part on the data-parallel
  // rank 0, the expert part on each EP group position's first replica); elsewhere it is not.
  absl::StatusOr<std::pair<Vector<float, TrainSpace>, Vector<float, TrainSpace>>> GatherMoments() const;
  // Sets the moments from whole ones [total] (each rank takes what it owns).
  absl::Status SetMoments(Vector<float, TrainSpace> full_m, Vector<float, TrainSpace> full_v);
  // The parts of the layout range [begin, end) whose moments this rank keeps, as pieces (layout
  // offset, offset in flat_m() / flat_v(), count): the whole range unsharded, else its overlap
  // with this rank's chunk and with the replicated tail of each part. Two ranks with the same
  // position in every part's communicator get the same pieces for the same range. With
  // shards_masters() they are also the model's master pieces (offsets in flat_masters()).
  struct MomentPiece {
    int64_t layout = 0, moment = 0, count = 0;
    bool tail = false;  // in a part's tail, which every rank of the part's communicator keeps
  };
  std::vector<MomentPiece> OwnedMoments(int64_t begin, int64_t end) const;

 private:
  // A range of the flat layout with its own ZeRO partition: [begin, begin + size) over `comm`
  // (null: replicated); its moments at moment_offset of flat_m_ / flat_v_; ZeRO-2's reduced
  // gradient chunk; whether its sum of squares differs between EP positions (the expert part).
  struct Range {
    int64_t begin = 0, size = 0, moment_offset = 0;
    ZeroPartition partition;
    std::shared_ptr<comm::Communicator<TrainSpace>> comm;
    Vector<float, TrainSpace> grad_shard;
    bool per_ep_position = false;
  };
  // The global norm of the step's (mean) gradient: every part's sum of squares (ZeRO-2: of the
  // chunks all-gathered over the part's ranks), the expert part's summed over the EP group in rank
  // order; the same double on every rank.
  absl::StatusOr<double> GradientNorm(const TrainModel& model) const;
  // An error unless the model keeps the masters this optimizer updates: whole, or (shards_masters())
  // exactly OwnedMoments(0, total) at the moments' offsets.
  absl::Status CheckMasters(const TrainModel& model) const;
  // ZeRO-1/2's clipping (by `clip`) and AdamW on this rank's shares, then the all-gathers.
  absl::Status ShardedUpdate(TrainModel& model, float clip, const kernels::AdamWOptions& adamw);
  // AdamW on the grad.extent(0) weights this rank owns at layout offset `layout` (moments at
  // `moment`): whole masters are updated in place there; sharded ones (at `moment` too) write
  // their rounding into the working copy at `layout` as well.
  absl::Status UpdateOwned(TrainModel& model, int64_t layout, int64_t moment, Vector<float, TrainSpace> grad,
                           const kernels::AdamWOptions& adamw);
  // Every rank's updated chunk of `part` into every rank's model (collective over the part's
  // ranks): the fp32 chunks of whole masters, or (sharded masters) the working copy's 16-bit
  // chunks. `send`: the chunk's gradient, consumed by now, lends its memory as the send buffer (an
  // all-gather must not read from the buffer it writes).
  absl::Status GatherChunks(TrainModel& model, const Range& part, Vector<float, TrainSpace> send) const;
  // AdamW on masters, grad, m, v [n] also writing the rounded weights into the model's working
  // copy [working_at, working_at + n) in its compute dtype (bf16 or f16).
  absl::Status StepAndCast(TrainModel& model, Vector<float, TrainSpace> masters, Vector<float, TrainSpace> grad,
                           Vector<float, TrainSpace> m, Vector<float, TrainSpace> v, int64_t working_at,
                           const kernels::AdamWOptions& adamw);
  // `owned`, a buffer laid out as flat_m() (each part's [chunk | tail]), over the layout range
  // [begin, end) into `out` [end - begin] (collective as GatherMasters): this rank's pieces
  // copied, the other ranks' chunk pieces received by rank 0 of each part's communicator.
  absl::Status GatherRange(Vector<float, TrainSpace> owned, int64_t begin, int64_t end,
                           Vector<float, TrainSpace> out) const;
  static Vector<float, TrainSpace> Part(Vector<float, TrainSpace> flat, const ParameterSlot& slot) {
    return Vector<float, TrainSpace>(flat.data() + slot.offset, slot.numel);
  }
  static Vector<float, TrainSpace> Sub(Vector<float, TrainSpace> flat, int64_t offset, int64_t n) {
    return Vector<float, TrainSpace>(flat.data() + offset, n);
  }
  OptimizerOptions options_;
  ZeroSharding zero_;
  std::shared_ptr<comm::Communicator<TrainSpace>> ep_;  // sharded experts: the EP group
  std::shared_ptr<comm::Communicator<TrainSpace>> pipeline_;  // a pipeline stage's: every stage
  std::vector<Range> parts_;  // the whole layout; or the dense range, then the expert range
  float mean_scale_ = 1.0f;  // ZeRO-2: 1 / data-parallel ranks
  Vector<float, TrainSpace> flat_m_, flat_v_;
  int64_t steps_ = 0;
  LossScaler scaler_;
};

}  // namespace openmoe::train

#endif  // OPENMOE_TRAIN_OPTIMIZER_H_
