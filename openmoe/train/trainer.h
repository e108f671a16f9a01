// File: openmoe/train/trainer.h
// A training run: the model (loaded, randomly initialised or resumed), its data sharded over the
// data-parallel ranks, AdamW with clipping, schedule and loss scaling, metrics sinks and atomic
// checkpoints (layout in checkpoint.h). One Step() is
//   this rank's next batch -> forward/backward -> gradient reduction -> optimizer -> metrics;
// Run() steps to the end, saving every save_interval steps and after the last one.
//
//   OPENMOE_ASSIGN_OR_RETURN(Trainer trainer, Trainer::Create(options));
//   OPENMOE_RETURN_IF_ERROR(trainer.Run());
//
// Data parallelism: each of `size` processes creates its Trainer with its DataParallelRank and a
// gradient reduction that averages flat_grads over the ranks (in place); it runs after the
// backward pass and before the gradient norm and the optimizer, so every rank applies the same
// update. Rank 0 alone writes metrics and checkpoints. With one rank the reduction is the identity.
//
// ZeRO (`zero`, stage 1 or 2 over the same ranks): the optimizer keeps and updates only this
// rank's part of the state (optimizer.h); in bf16 / fp16 runs the model keeps only this rank's part
// of the fp32 master weights too (whole tensors of them are gathered for checkpoints and dumps). Stage 1 still uses the gradient reduction (all-reduce,
// mean); stage 2 replaces it by the optimizer's reduce-scatter (the reduction is not called).
// In multi-rank runs SaveCheckpoint is collective: each rank writes the moments it keeps to its
// own optimizer shard file (checkpoint.h); a resume gives each rank its part of the saved state.
// A resume may use another world size, plugin or ZeRO stage: the checkpoint is consolidated (each
// rank takes its ZeRO slice of the whole moments for its own world size) and the data position is a
// global example index (ResumePosition, checkpoint.h).
#ifndef OPENMOE_TRAIN_TRAINER_H_
#define OPENMOE_TRAIN_TRAINER_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/io/token_batch.h"
#include "openmoe/train/checkpoint.h"
#include "openmoe/train/data_sharding.h"
#include "openmoe/train/expert_balance.h"
#include "openmoe/train/lr_schedule.h"
#include "openmoe/train/metrics.h"
#include "openmoe/train/optimizer.h"
#include "openmoe/train/train_options.h"

namespace openmoe::train {

// Called with the model's flat gradients [layout().total()] after each backward pass; replaces
// them with their reduction over the data-parallel ranks.
using GradientReduction = std::function<absl::Status(Vector<float, TrainSpace> flat_grads)>;
// Called with this rank's loss parts right after each forward/backward pass (before the finite
// check, the gradient reduction and the metrics); replaces them with their mean over the
// data-parallel ranks, so every rank logs, checks and dumps the same loss. Optional (identity).
using LossReduction = std::function<absl::Status(LossParts& loss)>;
// Pipeline parallelism (--plugin hybrid): this rank runs stage `stage` of `stages`, and its model
// stores only that stage's tensors (PipelineStageLayers: its layers, the embedding on the first
// stage, the final norm and LM head on the last). forward_backward replaces the model's
// ForwardBackward on this rank's batch [batch, seq_len]: it runs the stage's schedule, leaves in
// grad() the gradient of the stage's tensors and returns the whole loss (reduced over the stages);
// the data-parallel hooks above then apply as usual. `pipeline` (stages > 1): the ranks of this
// rank's data index in every stage, ordered by stage: the gradient norm sums over it, and the
// other stages' weights reach the writer through it. writer: false on every rank but the one that
// writes metrics, dumps and checkpoints (the data-parallel rank 0 of pipeline stage 0).
struct PipelineHooks {
  std::function<absl::StatusOr<LossParts>(TrainModel& model, const std::vector<int64_t>& input_ids,
                                          const std::vector<int64_t>& attention_mask, int64_t batch, int64_t seq_len)>
      forward_backward;
  bool writer = true;
  int stage = 0, stages = 1;
  std::shared_ptr<comm::Communicator<TrainSpace>> pipeline;
};

// Expert parallelism (--plugin ep / ep_zero with k < world / hybrid's --ep_size): this rank is
// position `index` of an EP group of `size` ranks and stores only experts [index * E / size,
// (index + 1) * E / size) (TrainableModel's ExpertShard); the model's token dispatcher (set by the
// caller after Create) must run exactly those. group: the EP group (whole expert tensors are
// all-gathered over it for checkpoints and --dump_step_state; the gradient norm sums over it);
// replicas: the ranks storing the same experts (the expert range's ZeRO and gradient reduction).
// size 0: every rank stores every expert.
struct ExpertParallelism {
  int size = 0, index = 0;
  std::shared_ptr<comm::Communicator<TrainSpace>> group, replicas;
};

class Trainer {
 public:
  // Validates `options`, prepares output_path, loads the model (or the --resume checkpoint with
  // its optimizer state and position), reads and tokenizes the dataset and, on rank 0, opens the
  // metrics sinks (metrics.jsonl; the progress printer on stderr with options.progress).
  // `reduce_gradients` may be empty for one rank only; `reduce_loss` may be empty always.
  // `zero`: ZeRO-1/2 over a communicator of dp.size ranks in which this one is dp.rank. Given with
  // stage 0 too, that communicator is the data-parallel group's (checkpoints: each rank writes its
  // optimizer shard; without it rank 0 writes the whole state).
  static absl::StatusOr<Trainer> Create(const TrainOptions& options, DataParallelRank dp = {},
                                        GradientReduction reduce_gradients = {}, LossReduction reduce_loss = {},
                                        ZeroSharding zero = {}, PipelineHooks pipeline = {},
                                        ExpertParallelism experts = {});

  // One more sink for every later step (any rank).
  void AddMetricsSink(std::unique_ptr<MetricsSink> sink) { sinks_.push_back(std::move(sink)); }

  // True once total_steps() steps are done.
  bool done() const { return position_.step >= total_steps_ || position_.epoch >= options_.num_epochs; }
  // One optimizer step on this rank's next batch; its metrics went to the sinks.
  absl::StatusOr<StepMetrics> Step();
  // Writes the checkpoint of the current position (checkpoint.h). Collective in multi-rank runs
  // (every rank must call it): each data-parallel rank writes its optimizer shard, expert tensors
  // are gathered over the EP groups, and rank 0 writes the weights and completes the folder.
  absl::Status SaveCheckpoint() const;
  // Step() until done(), checkpointing every save_interval steps and at the end; then Finish()
  // of every sink.
  absl::Status Run();

  const TrainOptions& options() const { return options_; }
  const DataParallelRank& data_parallel_rank() const { return dp_; }
  TrainModel& model() { return model_; }
  const AdamWOptimizer& optimizer() const { return optimizer_; }
  const TrainingPosition& position() const { return position_; }
  int64_t total_steps() const { return total_steps_; }
  int64_t steps_this_run() const { return steps_this_run_; }
  int64_t seq_len() const { return data_.seq_len; }
  // output_path/metrics.jsonl.
  std::string metrics_path() const;

 private:
  Trainer(TrainOptions options, DataParallelRank dp, GradientReduction reduce, TrainModel model)
      : options_(std::move(options)), dp_(dp), reduce_gradients_(std::move(reduce)), model_(std::move(model)) {}
  // --dump_step_state (written by the writer rank; collective under expert parallelism): the loss
  // parts, `grads` (the reduced gradient, whole tensors) and the weights after the step.
  absl::Status DumpStepState(const LossParts& loss, const std::vector<std::vector<float>>& grads) const;
  // The whole tensor `spec` (an entry of model().table()) of `flat`, a buffer in the model's flat
  // layout (gradients or gathered moments), on the host: a stacked expert tensor of a model
  // storing some experts is all-gathered over the EP group (collective over it; every rank calls
  // this for the same tensors); empty on ranks other than the writer.
  absl::StatusOr<std::vector<float>> WholeTensor(const TensorSpec& spec, Vector<float, TrainSpace> flat) const;
  // WholeTensor of the fp32 master weights: a model keeping only its share of them (ZeRO-1/2 of a
  // 16-bit run) gathers the tensor's slot over each part's ZeRO ranks first
  // (AdamWOptimizer::GatherMasters; collective over them too).
  absl::StatusOr<std::vector<float>> WholeMasterTensor(const TensorSpec& spec) const;
  // WholeTensor from the tensor's values as this model stores them, `stored` [its slot's numel]
  // (complete on the stage writer, and for expert tensors on the first replica of each EP position).
  absl::StatusOr<std::vector<float>> WholeFromStored(const TensorSpec& spec, Vector<float, TrainSpace> stored) const;
  // --load_balance, every load_balance_interval steps (collective over every rank): the routed
  // tokens summed over the data-parallel ranks, PlanExpertSwaps per MoE layer, each swap's weights
  // (fp32 master pieces as kept, the whole 16-bit working slot) and moment pieces exchanged between
  // the two EP positions (every replica with its counterpart), then the model's placement. The
  // model's function does not change.
  absl::Status BalanceExperts();
  // One swap of MoE layer `moe_layer`'s slots (a, j) <-> (b, j) on this rank's data, if it is at a or b.
  absl::Status ExchangeExpertSlot(int64_t moe_layer, const ExpertSwap& swap);
  // Every rank (collective): the whole tensors of every pipeline stage on the writer, in stage
  // order; `mine` are this stage's (WholeTensor's results for model().table(), meaningful on the
  // stage's data-parallel rank 0, which sends them to the writer). Empty elsewhere.
  absl::StatusOr<std::pair<std::vector<TensorSpec>, std::vector<std::vector<float>>>> GatherStages(
      std::vector<std::vector<float>> mine) const;
  // A barrier over every rank of the run (the data-parallel group, then the pipeline, then the
  // data-parallel group again).
  absl::Status BarrierAll() const;
  // The AdamW moment pieces this rank writes to its optimizer shard (checkpoint.h): of each stored
  // tensor, the parts it keeps, unless another rank keeps the same (replicated state is written by
  // the first rank of its group), as whole-tensor element ranges (experts in canonical order).
  std::vector<OptimizerShardPiece> OptimizerShardPieces() const;

  TrainOptions options_;
  DataParallelRank dp_;
  ExpertParallelism experts_;
  std::shared_ptr<comm::Communicator<TrainSpace>> dp_comm_;  // the data-parallel ranks (may be null)
  std::vector<ExpertPlacement> placements_;  // --load_balance: per MoE layer
  PipelineHooks pipeline_;
  bool writer_ = true;  // dp rank 0 (of pipeline stage 0)
  bool stage_writer_ = true;  // dp rank 0 of its stage: holds the stage's whole tensors for the writer
  GradientReduction reduce_gradients_;
  LossReduction reduce_loss_;
  TrainModel model_;
  AdamWOptimizer optimizer_;
  io::TokenBatch data_;  // every example [N, S]
  DataSharding sharding_;
  LrSchedule schedule_;
  std::string tokenizer_file_;  // copied into checkpoints when known
  TrainingPosition position_;
  int64_t total_steps_ = 0, steps_this_run_ = 0;
  std::chrono::steady_clock::time_point start_time_;
  std::vector<std::unique_ptr<MetricsSink>> sinks_;
};

}  // namespace openmoe::train

#endif  // OPENMOE_TRAIN_TRAINER_H_
