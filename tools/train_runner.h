// File: tools/train_runner.h
// The training loop of //tools:train (single device): data, forward/backward, AdamW with fp32
// master weights, LR schedule and clipping, progress bar, metrics, atomic checkpoints, resume.
//
// Output layout (`output_path`):
//   step-<N>/            a Hugging Face model folder (config.json, model.safetensors or, above
//                        max_shard_bytes, model-0000K-of-0000N.safetensors shards with
//                        model.safetensors.index.json; tokenizer.model) plus
//                        trainer_state.safetensors (AdamW moments) and
//                        trainer_state.json (step, epoch, next batch, seed, options) and
//                        run_config.json (the run's options: what `--resume DIR` restores)
//   latest               the name of the newest complete step-<N> folder
//   metrics.jsonl        one line per step; loss_curve.png at the end
// Folders are written under a temporary name and renamed, and `latest` is replaced by rename, so
// a run killed at any moment leaves the previous checkpoint intact (the next save removes the
// temporary folders of dead processes; a resume drops metrics.jsonl's lines after its step).
#ifndef TOOLS_TRAIN_RUNNER_H_
#define TOOLS_TRAIN_RUNNER_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace openmoe::tools {

struct TrainOptions {
  std::string model_dir;   // load a checkpoint ...
  std::string model_name;  // ... or random-init a preset (base, 8b, 34b)
  std::string output_path = "./outputs";
  std::string dataset;     // .jsonl / .json records or a pre-tokenized .safetensors
  std::string task_name = "super_natural_instructions";  // recorded in trainer_state.json
  std::string resume;      // a step-<N> folder, or an output_path with a `latest` file
  std::string dump_step_state;
  std::string precision = "fp32";  // fp32 | bf16 | fp16 (fp32 masters, 16-bit compute; fp16 with loss scaling)
  std::string lr_schedule = "constant";  // constant | cosine (after warmup)
  int64_t num_epochs = 1, max_steps = 0, batch_size = 1, save_interval = 1000, max_length = 2048;
  int64_t warmup_steps = 0;
  uint64_t seed = 42;
  double lr = 1e-5, weight_decay = 0.0, max_grad_norm = 0.0;
  double initial_loss_scale = 65536.0;  // fp16 only (openmoe/loss_scaler.h)
  bool shuffle = true, progress = true;
  bool grad_checkpoint = false;  // recompute each layer's activations in the backward pass
  int64_t max_shard_bytes = int64_t(5) << 30;  // weights above this go to model-0000K-of-0000N shards
  std::optional<double> label_smoothing, z_loss_factor, router_aux_loss_factor, router_z_loss_factor;
  // The --model DIR / --model_name the run started from: recorded in run_config.json and kept
  // across resumes (which load the checkpoint's own weights). Empty: model_dir / model_name.
  std::string initial_model_dir, initial_model_name;
};

absl::Status RunTraining(const TrainOptions& options);

// `--resume DIR`: the options of the run that wrote the checkpoint DIR names (its run_config.json),
// into `options`, with output_path the folder holding that checkpoint. Returns false, leaving
// `options` as it is, for a checkpoint without run_config.json (an older one).
absl::StatusOr<bool> LoadRunConfig(const std::string& resume, TrainOptions& options);

}  // namespace openmoe::tools

#endif  // TOOLS_TRAIN_RUNNER_H_
