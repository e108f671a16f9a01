// File: openmoe/trainable_model.h
// The OpenMoE decoder for training: float32 master weights under their Hugging Face names, in one
// flat buffer (parameter_layout.h: q/k/v adjacent, run forward as one [Wq + 2Wkv, H] product;
// gate_proj and up_proj adjacent, one [3I, H] product), the forward blocks inference uses
// (blocks.h) over a [B, S] batch
// that keeps the activations the backward pass needs, and the gradients of OpenMoE's training
// loss (losses.h) for every parameter. The batch is one routing group with training capacity
// (router_capacity_factor_train); labels are the inputs shifted by one, padding not masked.
// Under ZeRO-1/2 of a bf16 / fp16 run the model keeps only this rank's share of the fp32 masters
// (ShardMasters); the 16-bit working copy it computes with stays whole.
//
//   OPENMOE_ASSIGN_OR_RETURN(auto model, TrainableModel<Space>::Load(dir));
//   OPENMOE_ASSIGN_OR_RETURN(LossParts loss, model.ForwardBackward(ids, mask, B, S));
//   model.grad("lm_head.weight")  // dloss/dW, float32 [V * H]
#ifndef OPENMOE_TRAINABLE_MODEL_H_
#define OPENMOE_TRAINABLE_MODEL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/execution_context.h"
#include "openmoe/checkpoint.h"
#include "openmoe/checkpoint_table.h"
#include "openmoe/config.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/tensor_types.h"
#include "openmoe/layer_range.h"
#include "openmoe/losses.h"
#include "openmoe/parameter_layout.h"
#include "openmoe/token_dispatcher.h"

namespace openmoe {

template <class ExecSpace>
class TrainableModel {
 public:
  using MemSpace = typename ExecSpace::memory_space;

  // `shard` (expert parallelism): store only these experts (default: every expert). The flat
  // buffers then hold the dense parameters and the shard's experts (TrainingTable's order); a
  // token dispatcher must run only experts of the shard. `layers` (a pipeline stage): store only
  // that stage's tensors (layer_range.h; default: the whole model); such a model runs only
  // ForwardBackwardStage on exactly those layers.
  static absl::StatusOr<TrainableModel> Load(const std::string& model_dir, ExpertShard shard = {},
                                             std::optional<LayerRange> layers = std::nullopt);
  static absl::StatusOr<TrainableModel> FromCheckpoint(const OpenMoeConfig& config, const CheckpointReader& reader,
                                                       ExpertShard shard = {},
                                                       std::optional<LayerRange> layers = std::nullopt);
  // Upstream's initialiser (spec 2.6, InitStd): normal draws, norms 1, the embedding's pad row 0.
  // A shard or stage gets the values its tensors have in the whole model's init.
  static absl::StatusOr<TrainableModel> RandomInit(const OpenMoeConfig& config, uint64_t seed, ExpertShard shard = {},
                                                   std::optional<LayerRange> layers = std::nullopt);

  const OpenMoeConfig& config() const { return config_; }
  // The loss factors (label smoothing, output z-loss, router aux / z) of later ForwardBackward calls.
  void SetLossFactors(double label_smoothing, double z_loss_factor, double router_aux_loss_factor,
                      double router_z_loss_factor) {
    config_.label_smoothing = float(label_smoothing), config_.z_loss_factor = float(z_loss_factor);
    config_.router_aux_loss_factor = float(router_aux_loss_factor);
    config_.router_z_loss_factor = float(router_z_loss_factor);
  }
  // The stored tensors, in flat-buffer order (TrainingTable: dense ones, then the experts of
  // expert_shard(), whose stacked tensors are [shard.count, ...]).
  const std::vector<TensorSpec>& table() const { return table_; }
  // The experts this model stores, of config().num_experts.
  const ExpertShard& expert_shard() const { return shard_; }
  // The layers (and embedding / head) this model stores.
  const LayerRange& layers() const { return layers_; }
  // Where the stored experts start in the flat buffers: [0, expert_begin()) are the dense
  // parameters, [expert_begin(), layout().total()) the shard's experts.
  int64_t expert_begin() const { return expert_begin_; }
  // One tensor's weights / gradient: views into the flat buffers below (valid while the model is).
  // param() needs whole masters (see flat_params()).
  Vector<float, ExecSpace> param(const std::string& name) const;
  Vector<float, ExecSpace> grad(const std::string& name) const { return grads_.at(name); }
  // Every parameter and every gradient as one float32 buffer [layout().total()] each (tensors at
  // layout()'s offsets, zero gaps): what the optimizer, the gradient norm and gradient
  // reductions work on. flat_params() is the whole fp32 master weights: the weights an fp32 run
  // computes with (always whole), the masters of a bf16 / fp16 one. A model whose masters are
  // sharded (ShardMasters) has no whole buffer: flat_params() and param() then abort with a
  // message (use flat_masters() / OwnedMasters(), or the optimizer's GatherMasters).
  const ParameterLayout& layout() const { return layout_; }
  Vector<float, ExecSpace> flat_params() const;
  Vector<float, ExecSpace> flat_grads() const { return flat_grads_; }

  // ---- fp32 masters kept in part (ZeRO-1/2 of a bf16 / fp16 run) ----
  // [layout, layout + count) of the flat layout, kept at flat_masters()[master, master + count).
  struct MasterPiece {
    int64_t layout = 0, master = 0, count = 0;
  };
  // Keeps only `pieces` of the fp32 masters (ascending, disjoint ranges of [0, layout().total()),
  // packed in order: master = the counts before it): the whole 16-bit working copy is converted
  // from the whole masters first, then the rest of the masters is freed. From then on the working
  // copy is the only whole copy of the weights; whoever updates a master piece must write its
  // rounding into flat_working() too (the optimizer's fused cast), and whoever moves weights (an
  // expert swap) must move both. 16-bit runs only (an fp32 run computes with its masters); once.
  absl::Status ShardMasters(const std::vector<MasterPiece>& pieces);
  bool masters_sharded() const { return sharded_dtype_ != ComputeDtype::kFp32; }
  // The fp32 masters this model keeps: flat_params() when whole, else the pieces' values in piece
  // order [sum of their counts].
  Vector<float, ExecSpace> flat_masters() const { return flat_params_; }
  // The parts of the layout range [begin, end) whose masters this model keeps, as pieces: the
  // whole range (master = layout offset) when whole, else its overlaps with the kept pieces.
  std::vector<MasterPiece> OwnedMasters(int64_t begin, int64_t end) const;

  // The 16-bit working copy of the weights that a bf16 / fp16 step computes with [total],
  // allocated here if needed (raw bits of compute_dtype()); always whole. An optimizer that writes
  // it together with the weights (kernels::AdamWStepAndCast, in compute_dtype()) calls
  // MarkWorkingCopyCurrent(): the next step then skips its own conversion of the whole masters.
  // Whoever changes whole masters in any other way between that call and the next step (a load,
  // a broadcast from another rank) must call InvalidateWorkingCopy(). With sharded masters there
  // is no conversion: the working copy is always current (both calls change nothing).
  Vector<uint16_t, ExecSpace> flat_working();
  void MarkWorkingCopyCurrent() { working_current_ = true; }
  void InvalidateWorkingCopy() { working_current_ = false; }
  // How the MoE layers move tokens to their experts and back (SingleRankDispatcher by default:
  // every expert here). An expert-parallel dispatcher makes this model run its local experts only.
  void set_token_dispatcher(std::shared_ptr<TokenDispatcher<ExecSpace>> dispatcher) { dispatcher_ = std::move(dispatcher); }

  // ---- expert load balancing (--load_balance, under expert parallelism) ----
  // Where each MoE layer's experts are stored. Slot s = p * El + j of the EP group (position p,
  // local index j, El = experts per position) holds expert slot_expert[s]; this rank stores the
  // slots of expert_shard() ([first, first + count)), in slot order. The router stays in canonical
  // expert order: the dispatcher is handed each assignment's slot and the combine weights in slot
  // order, so a placement changes where an expert runs, never what the model computes (bit for
  // bit). Identity by default. `moe_layer`: the index among the MoE layers (0 .. NumMoeLayers()).
  absl::Status SetExpertPlacement(int64_t moe_layer, const std::vector<int32_t>& slot_expert);
  const std::vector<int32_t>& expert_placement(int64_t moe_layer) const { return slot_expert_[moe_layer]; }
  // Count the tokens each expert is routed to (both top-2 choices, kept or dropped) in later steps.
  void set_count_expert_loads(bool count);
  // The counts since the last call, [NumMoeLayers() * E] (MoE layer-major, canonical experts), then
  // zero. This rank's own tokens only (sum over the ranks for the global loads).
  std::vector<int64_t> TakeExpertLoads();

  // The step keeps its activation and temporary buffers in its execution context's pool between
  // steps (kernels/buffer_pool.h: a step allocates nothing once one has run). This frees them, after
  // the device has finished with them: for work that needs the memory between steps, such as
  // saving a checkpoint; the next step allocates them again.
  void ReleaseStepBuffers() const;

  // Activation recomputation (gradient checkpointing): the forward pass keeps only each layer's
  // input, and the backward pass runs the layer again before its gradients; same results.
  void set_recompute_activations(bool recompute) { recompute_ = recompute; }
  // At most this many bytes (default 1 GiB) hold all rows' logit gradients, so that the LM head's
  // weight gradient is one product; beyond, it is added chunk by chunk (tests force either path).
  void set_lm_head_gradient_bytes(int64_t bytes) { lm_head_gradient_bytes_ = bytes; }
  // Mixed precision (bf16 or fp16): fp32 master weights, gradients and optimizer; each step
  // computes with 16-bit copies of the weights, keeps its activations in 16 bits and runs the
  // products (forward and input gradients) in 16 bits with float32 accumulation; the element-wise
  // backward ops and the weight gradients accumulate in float32.
  enum class ComputeDtype { kFp32, kBf16, kFp16 };
  void set_compute_dtype(ComputeDtype dtype) { dtype_ = dtype, working_current_ = false; }
  ComputeDtype compute_dtype() const { return dtype_; }
  // Loss scaling (fp16): the backward pass starts from loss_scale x the loss gradients, so that
  // small gradients survive fp16's range in the 16-bit products; grad() holds them divided by
  // the scale again. Where the scaled gradients overflow, grad() has inf/NaN (LossScaler).
  void set_loss_scale(float loss_scale) { loss_scale_ = loss_scale; }

  // Loss of the batch and, in grad(), its gradient for every parameter (overwritten).
  absl::StatusOr<LossParts> ForwardBackward(const std::vector<int64_t>& input_ids,
                                            const std::vector<int64_t>& attention_mask, int64_t batch,
                                            int64_t seq_len);

  // ---- pipeline parallelism: one stage's share of a step ----
  // What a pipeline schedule calls on this stage, one microbatch at a time. Hidden states and
  // their gradients cross stages as float32 [rows, hidden] (rows = microbatch examples x S; exact
  // for bf16 / fp16 runs too: their hidden states convert to float32 and back unchanged).
  struct StageOps {
    int64_t microbatches = 0, rows = 0, hidden = 0;
    bool first = false, last = false;  // the stage holding the embedding / the final norm, LM head and loss
    // Microbatch `micro`'s forward through the stage's layers: the first stage embeds its ids (`in`
    // unused), the others start from `in` (the previous stage's output); every stage but the last
    // writes its output to `out` (unused on the last). The activations stay until backward(micro).
    std::function<absl::Status(int64_t micro, ConstMatrix<float, ExecSpace> in, Matrix<float, ExecSpace> out)> forward;
    // Microbatch `micro`'s backward, after its forward: the last stage starts from the microbatch's
    // loss (final norm, LM head; `dout` unused), the others from `dout` (the gradient of the stage's
    // output, from the next stage); every stage but the first writes the gradient of its input to
    // `din` (unused on the first). Weight gradients accumulate in grad().
    std::function<absl::Status(int64_t micro, ConstMatrix<float, ExecSpace> dout, Matrix<float, ExecSpace> din)> backward;
  };
  // Runs ops.forward and ops.backward once per microbatch, each forward before its backward, in
  // any order (GPipe, 1F1B), moving hidden states / gradients between stages.
  using PipelineSchedule = std::function<absl::Status(const StageOps& ops)>;
  // This stage's share of a step on `batch` examples split into batch / microbatch_size
  // microbatches (each its own routing group): layers [first_layer, end_layer), plus the embedding
  // when first_layer is 0 and the final norm, LM head and loss when end_layer is the layer count.
  // grad() (overwritten): this stage's part of the gradient of the mean over microbatches of each
  // microbatch's loss; every other parameter's gradient is 0 (so a sum over the stages gives the
  // whole gradient). Returns this stage's part of that mean loss: the LM loss on the last stage
  // (0 elsewhere), the router aux / z losses of its MoE layers (already weighted by the factors
  // over all MoE layers of the model); the sum over stages is the unpipelined loss.
  absl::StatusOr<LossParts> ForwardBackwardStage(int64_t first_layer, int64_t end_layer,
                                                 const std::vector<int64_t>& input_ids,
                                                 const std::vector<int64_t>& attention_mask, int64_t batch,
                                                 int64_t seq_len, int64_t microbatch_size,
                                                 const PipelineSchedule& schedule);

 private:
  // The stage a step runs (ForwardBackward: every layer, one microbatch, no schedule).
  struct StagePlan {
    int64_t first_layer = 0, end_layer = 0, microbatch_size = 0;
    const PipelineSchedule* schedule = nullptr;
  };
  template <class T>
  absl::StatusOr<LossParts> Step(const std::vector<int64_t>& input_ids, const std::vector<int64_t>& attention_mask,
                                 int64_t batch, int64_t seq_len, const StagePlan& plan);

  // The step's working weights at `offset` (fp32 masters, or the 16-bit copy), gradients there.
  template <class T>
  const T* Working(int64_t offset) const;
  Matrix<float, ExecSpace> G(int64_t offset, int64_t rows, int64_t cols) const;
  Vector<float, ExecSpace> GV(int64_t offset) const;  // [H]: a norm weight's gradient
  // Before a step in T: for bf16 / f16 the working copy converted from the whole masters unless
  // the optimizer already wrote it; nothing for float or with sharded masters (always current;
  // an error if the compute dtype changed since ShardMasters).
  template <class T>
  absl::Status RefreshWorkingCopy(const ExecSpace& space);
  // The whole masters rounded to T into flat_working().
  template <class T>
  absl::Status ConvertMastersToWorking(const ExecSpace& space);

  OpenMoeConfig config_;
  bool recompute_ = false;
  int64_t lm_head_gradient_bytes_ = int64_t(1) << 30;  // parallel/memory_model.cc counts this default
  ComputeDtype dtype_ = ComputeDtype::kFp32;
  float loss_scale_ = 1.0f;
  // Checks `shard` against the config (every expert when empty), sets shard_ and table_.
  absl::Status SetTable(ExpertShard shard, std::optional<LayerRange> layers);
  // Allocates the flat buffers for table_ and the per-tensor views into them.
  void AllocateFlatBuffers();

  std::vector<TensorSpec> table_;
  ExpertShard shard_;
  LayerRange layers_;
  int64_t expert_begin_ = 0;
  ParameterLayout layout_;
  ModelOffsets offsets_;
  // The stream, scratch arena, tuning and cuBLAS handle of this model's ops (copies share them).
  kernels::ExecutionContext<ExecSpace> context_;  // where each layer's tensors start, resolved at load: no lookups by name per step
  // flat_params_: the fp32 masters, [layout_.total()] when whole; after ShardMasters only the
  // master_pieces_, packed [sum of their counts]. flat_grads_: [layout_.total()].
  Vector<float, ExecSpace> flat_params_, flat_grads_;
  // Regions of flat_grads_ that weight-gradient products write, offset -> size, learned in the
  // first step (which zero-fills the whole buffer). From the second step on the step zero-fills
  // only the rest, and the first product into each region in a step overwrites it (beta = 0): the
  // fp32 gradients are written once instead of zero-filled, read and written again. (A step that
  // fails part-way may leave regions it did not reach with the previous step's values.)
  std::map<int64_t, int64_t> product_grads_;
  bool product_grads_known_ = false;
  std::vector<MasterPiece> master_pieces_;
  // The compute dtype whose working copy ShardMasters filled (kFp32: the masters are whole).
  ComputeDtype sharded_dtype_ = ComputeDtype::kFp32;
  // The 16-bit copy of the masters (bf16 / fp16 runs), same layout, always whole: raw bits, read
  // as the step's type; allocated by the first 16-bit step (or ShardMasters).
  Vector<uint16_t, ExecSpace> flat_working_;
  bool working_current_ = false;
  // Expert placement per MoE layer (host [moe_layers][E], and the device copies [moe_layers, E] the
  // step reads; placed_: whether any layer is not the identity) and load counters [moe_layers * E].
  std::vector<std::vector<int32_t>> slot_expert_;
  Kokkos::View<int32_t**, Kokkos::LayoutRight, MemSpace> slot_expert_d_, expert_slot_d_;
  std::vector<bool> placed_;
  Kokkos::View<int64_t*, MemSpace> expert_loads_;
  std::shared_ptr<TokenDispatcher<ExecSpace>> dispatcher_ = std::make_shared<SingleRankDispatcher<ExecSpace>>();  // one-shot: set by MarkWorkingCopyCurrent, cleared by the step
  std::map<std::string, Vector<float, ExecSpace>> params_, grads_;  // HF name -> view into the flat buffers
};

}  // namespace openmoe

#endif  // OPENMOE_TRAINABLE_MODEL_H_
