// File: tools/logits_runner.h
// The work of //tools:logits, apart from flag parsing (so that the Kokkos translation unit holds
// no Abseil flags): load the model, read [B, S] inputs, write [B, S, V] float32 logits.
#ifndef TOOLS_LOGITS_RUNNER_H_
#define TOOLS_LOGITS_RUNNER_H_

#include <string>

#include "absl/status/status.h"

namespace openmoe::tools {

struct LogitsOptions {
  std::string model_dir;
  std::string inputs_path;   // safetensors with int64 input_ids, attention_mask [B, S]
  std::string output_path;   // safetensors with float32 logits [B, S, V]
  std::string mode = "eval";  // eval | train (routing capacity factor)
  std::string dtype = "fp32";
};

absl::Status RunLogits(const LogitsOptions& options);

}  // namespace openmoe::tools

#endif  // TOOLS_LOGITS_RUNNER_H_
