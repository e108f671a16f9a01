// File: openmoe/train/checkpoint.h
// A training run's checkpoints: written atomically, found again by --resume, and the run's own
// options (run_config.json) read back from them.
//
// Output layout (`output_path`):
//   step-<N>/            a Hugging Face model folder (config.json, model.safetensors or, above
//                        max_shard_bytes, model-0000K-of-0000N.safetensors shards with
//                        model.safetensors.index.json; tokenizer.model) plus
//                        the AdamW moments: one process writes trainer_state.safetensors (m.<name>,
//                        v.<name>); ranks of a multi-rank run each write their own pieces into
//                        optimizer/rank-RRRRR-of-NNNNN.safetensors, with optimizer/index.json
//                        (OptimizerShardPiece below),
//                        trainer_state.json (step, epoch, next batch, next_example: the epoch's
//                        examples consumed, in global DistributedSampler order, seed, data shape,
//                        optimizer steps, loss scaler) and run_config.json (the run's options:
//                        what `--resume DIR` restores)
//   latest               the name of the newest complete step-<N> folder
//   metrics.jsonl        one line per step (metrics.h); tools/train adds loss_curve.png
// Folders are written under a temporary name and renamed, and `latest` is replaced by rename, so
// a run killed at any moment leaves the previous checkpoint intact (the next save removes the
// temporary folders of dead processes; a resume drops metrics.jsonl's lines after its step).
#ifndef OPENMOE_TRAIN_CHECKPOINT_H_
#define OPENMOE_TRAIN_CHECKPOINT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/loss_scaler.h"
#include "openmoe/train/optimizer.h"
#include "openmoe/train/train_options.h"

namespace openmoe::train {

// Where training continues: the steps done and the next batch of the data order (in batches of
// the run's global batch, batch_size x data-parallel ranks).
struct TrainingPosition {
  int64_t step = 0, epoch = 0, batch = 0;
};

// What decides the data order. -1: not recorded. A resume must see the same examples, seq_len,
// seed and shuffle; batch_size and data_parallel_size may change (ResumePosition).
struct DataOrder {
  int64_t batch_size = -1, examples = -1, seq_len = -1, seed = -1, shuffle = -1;
  int64_t data_parallel_size = 1;  // recorded when above 1
  // Examples per optimizer step over all ranks (-1: batch_size not recorded).
  int64_t global_batch() const { return batch_size < 0 ? -1 : batch_size * data_parallel_size; }
};

// Multi-rank optimizer state: each rank writes the AdamW moment pieces it is responsible for to
// optimizer/rank-RRRRR-of-NNNNN.safetensors as 1-D tensors "m.<tensor>@<first>" and
// "v.<tensor>@<first>": elements [first, first + count) of the whole tensor flattened (stacked
// experts in canonical order). Every element of every tensor is in exactly one piece of one file;
// optimizer/index.json lists the files. A resume with any world size, plugin or ZeRO stage reads
// the pieces it needs (LoadOptimizerMoments).
struct OptimizerShardPiece {
  std::string tensor;
  int64_t first = 0;
  std::vector<float> m, v;  // [count] each
};
// The shard folder of a step, where the ranks write before rank 0 completes and renames it:
// output_path/.step-<N>.tmp-shards.
std::string CheckpointStagingDir(const std::string& output_path, int64_t step);
// Writes rank `rank`'s pieces to staging_dir/optimizer/rank-RRRRR-of-NNNNN.safetensors (atomically).
absl::Status WriteOptimizerShard(const std::string& staging_dir, int rank, int ranks,
                                 const std::vector<OptimizerShardPiece>& pieces);

// Everything one checkpoint holds: the whole model's tensors on the host (under expert
// parallelism gathered from the ranks' experts), and the moments (whole, or already written by
// the ranks as shards).
struct CheckpointContents {
  const TrainOptions* options = nullptr;
  const AdamWOptimizer* optimizer = nullptr;  // its step count and loss scaler
  OpenMoeConfig config;
  // Every tensor of the model (stacked expert tensors with every expert: [E, ...]), in any order,
  // with its weights and AdamW moments (each [spec.numel()]).
  std::vector<TensorSpec> table;
  std::vector<std::vector<float>> params, m, v;  // [table.size()]; m, v empty with optimizer_shards
  // > 0: the ranks wrote this many optimizer shard files into CheckpointStagingDir (which exists);
  // SaveCheckpoint completes that folder instead of a new one and writes optimizer/index.json.
  int optimizer_shards = 0;
  TrainingPosition position;
  DataOrder data_order;
  std::string tokenizer_file;  // copied in when known
};

// Writes options.output_path/step-<N> under a temporary name, renames it, points `latest` at it
// and keeps the two newest checkpoints.
absl::Status SaveCheckpoint(const CheckpointContents& contents);

// The folder a --resume argument names: a step-<N> folder, or an output path with `latest`.
absl::StatusOr<std::string> ResumeFolder(const std::string& resume);

// trainer_state.json of the checkpoint folder `folder`.
struct TrainerState {
  TrainingPosition position;
  int64_t optimizer_steps = 0;
  std::optional<LossScalerState> loss_scaler;
  DataOrder data_order;
  // Examples of position.epoch consumed, counted in the epoch's global order (DistributedSampler:
  // global batch b is positions [b G, (b + 1) G) of it, whatever the split of G = batch_size x D
  // over the ranks); -1: not recorded (older checkpoints: next_batch x G).
  int64_t next_example = -1;
};
// A missing loss-scaler scale reads as initial_loss_scale.
absl::StatusOr<TrainerState> ReadTrainerState(const std::string& folder, double initial_loss_scale);
// The checkpoint was trained with `saved`; an error naming the first difference from `now` in
// examples, seq_len, seed or shuffle (batch_size and data_parallel_size may differ).
absl::Status CheckSameDataOrder(const DataOrder& saved, const DataOrder& now);
// Where a run with data order `now` continues from the checkpoint `saved` (another world size,
// plugin or split of the global batch over ranks allowed): the same epoch and the same global
// example index, next_example / G' batches of this run's global batch G' = now.global_batch()
// (the next epoch when that completes this one). An error when G' does not divide next_example
// (no step boundary of this run there). With G' equal to the saved global batch the continuation
// takes exactly the examples the uninterrupted run would have taken (each rank its
// DistributedSampler share of them); with another G' it is a new run from there (its steps and
// schedule count on from `saved`'s step), and `note` says so.
absl::StatusOr<TrainingPosition> ResumePosition(const TrainerState& saved, const DataOrder& now, std::string* note);
// The AdamW moments of `folder` (trainer_state.safetensors, or the optimizer/ shards) into
// `optimizer` (laid out as `model`;
// under ZeRO each rank keeps its own part of the whole state).
absl::Status LoadOptimizerMoments(const std::string& folder, const TrainModel& model, AdamWOptimizer& optimizer);

// `--resume DIR`: the options of the run that wrote the checkpoint DIR names (its run_config.json),
// into `options`, with output_path the folder holding that checkpoint. Returns false, leaving
// `options` as it is, for a checkpoint without run_config.json (an older one).
absl::StatusOr<bool> LoadRunConfig(const std::string& resume, TrainOptions& options);

std::vector<float> ToHost(Vector<float, TrainSpace> v);
void FromHost(const std::vector<float>& host, Vector<float, TrainSpace> v);

}  // namespace openmoe::train

#endif  // OPENMOE_TRAIN_CHECKPOINT_H_
