#include "openmoe/train/train_options.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace openmoe::train {

bool IsPretokenized(const std::string& dataset) {
  const std::string suffix = ".safetensors";
  return dataset.size() > suffix.size() && dataset.compare(dataset.size() - suffix.size(), suffix.size(), suffix) == 0;
}

absl::Status ValidateTrainOptions(const TrainOptions& o) {
  if (o.precision != "fp32" && o.precision != "bf16" && o.precision != "fp16") {
    return absl::InvalidArgumentError(absl::StrCat("--precision must be fp32, bf16 or fp16, got ", o.precision));
  }
  if (o.batch_size <= 0) return absl::InvalidArgumentError(absl::StrCat("--batch_size must be positive, got ", o.batch_size));
  if (o.num_epochs <= 0) return absl::InvalidArgumentError(absl::StrCat("--num_epochs must be positive, got ", o.num_epochs));
  if (o.save_interval <= 0) return absl::InvalidArgumentError(absl::StrCat("--save_interval must be positive, got ", o.save_interval));
  if (o.max_steps < 0 || o.warmup_steps < 0) return absl::InvalidArgumentError("--max_steps and --warmup_steps must be >= 0");
  if (!(o.lr > 0)) return absl::InvalidArgumentError(absl::StrCat("--lr must be positive, got ", o.lr));
  if (!(o.initial_loss_scale >= 1) || !std::isfinite(o.initial_loss_scale)) {
    return absl::InvalidArgumentError(absl::StrCat("--initial_loss_scale must be a finite number >= 1, got ", o.initial_loss_scale));
  }
  if (o.weight_decay < 0 || o.max_grad_norm < 0) return absl::InvalidArgumentError("--weight_decay and --max_grad_norm must be >= 0");
  if (o.lr_schedule != "constant" && o.lr_schedule != "cosine") {
    return absl::InvalidArgumentError(absl::StrCat("--lr_schedule must be constant or cosine, got ", o.lr_schedule));
  }
  if (o.load_balance_interval <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("--load_balance_interval must be positive, got ", o.load_balance_interval));
  }
  if (o.dataset.empty()) return absl::InvalidArgumentError("--dataset is required (a .jsonl/.json file or a .safetensors batch)");
  if (o.model_dir.empty() == o.model_name.empty() && o.resume.empty()) {
    return absl::InvalidArgumentError("give exactly one of --model DIR and --model_name base|8b|34b (or --resume)");
  }
  if (!o.model_name.empty() && o.resume.empty() && !IsPretokenized(o.dataset)) {  // checked before a long random init
    return absl::FailedPreconditionError(absl::StrCat("--dataset '", o.dataset, "' is text, but --model_name ", o.model_name,
                                                      " has no tokenizer.model; give --model DIR with one, or "
                                                      "pre-tokenized .safetensors data"));
  }
  return absl::OkStatus();
}

}  // namespace openmoe::train
