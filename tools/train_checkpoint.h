// File: tools/train_checkpoint.h
// The checkpoints of //tools:train (layout in train_runner.h): what a training run holds between
// steps, how it is written atomically, and where a --resume argument points.
#ifndef TOOLS_TRAIN_CHECKPOINT_H_
#define TOOLS_TRAIN_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <Kokkos_Core.hpp>

#include "absl/status/statusor.h"
#include "openmoe/io/token_batch.h"
#include "openmoe/loss_scaler.h"
#include "openmoe/trainable_model.h"
#include "tools/train_runner.h"

namespace openmoe::tools {

using TrainSpace = Kokkos::DefaultExecutionSpace;

// Where training continues: the step reached and the next batch of the data order.
struct Position {
  int64_t step = 0, epoch = 0, batch = 0;
};

struct Optimizer {
  // AdamW moments, float32, in the model's flat layout [layout().total()], and per-tensor views.
  Vector<float, TrainSpace> flat_m, flat_v;
  std::map<std::string, Vector<float, TrainSpace>> m, v;
  int64_t steps = 0;   // updates applied (AdamW's bias-correction step; fp16 skips overflowing steps)
  LossScaler scaler;   // fp16 runs
};

struct Run {
  TrainOptions options;
  TrainableModel<TrainSpace> model;
  Optimizer optimizer;
  io::TokenBatch data;         // [N, S]
  std::string tokenizer_file;  // copied into checkpoints when known
  Position position;
};

// Writes output_path/step-<N> (weights, optimizer state, data position) under a temporary name,
// renames it, points `latest` at it and keeps the two newest checkpoints.
absl::Status SaveCheckpoint(const Run& run);

// The folder a --resume argument names: a step-<N> folder, or an output path with `latest`.
absl::StatusOr<std::string> ResumeFolder(const std::string& resume);

absl::StatusOr<std::string> ReadText(const std::string& path);
// Writes `text` to a temporary file next to `path`, then renames it over `path`.
absl::Status WriteTextAtomically(const std::string& path, const std::string& text);

std::vector<float> ToHost(Vector<float, TrainSpace> v);
void FromHost(const std::vector<float>& host, Vector<float, TrainSpace> v);

}  // namespace openmoe::tools

#endif  // TOOLS_TRAIN_CHECKPOINT_H_
