// File: openmoe/train/train_options.h
// The options of a training run: one field per //tools:train flag (the flag names of Colossal-AI's
// OpenMoE train.py), and their validation, whose errors name the flag.
#ifndef OPENMOE_TRAIN_TRAIN_OPTIONS_H_
#define OPENMOE_TRAIN_TRAIN_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"

namespace openmoe::train {

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
  // Expert parallelism: every load_balance_interval steps, move experts between EP positions so
  // that the busiest one gets fewer tokens (openmoe/train/expert_balance.h).
  bool load_balance = false;
  int64_t load_balance_interval = 1000;
  std::optional<double> label_smoothing, z_loss_factor, router_aux_loss_factor, router_z_loss_factor;
  // The --model DIR / --model_name the run started from: recorded in run_config.json and kept
  // across resumes (which load the checkpoint's own weights). Empty: model_dir / model_name.
  std::string initial_model_dir, initial_model_name;
};

// A .safetensors dataset holds token ids; anything else is text records.
bool IsPretokenized(const std::string& dataset);

// Ranges and choices of every option, and that the model and data are given; the message names
// the flag ("--batch_size must be positive, got 0").
absl::Status ValidateTrainOptions(const TrainOptions& options);

}  // namespace openmoe::train

#endif  // OPENMOE_TRAIN_TRAIN_OPTIONS_H_
