// File: tools/generate_runner.h
// The work of //tools:generate apart from flag parsing: load model (+ tokenizer), build prompts,
// run KV-cache generation, stream text, write ids.
#ifndef TOOLS_GENERATE_RUNNER_H_
#define TOOLS_GENERATE_RUNNER_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "openmoe/runtime/sampling.h"

namespace openmoe::tools {

struct GenerateRequest {
  std::string model_dir;
  std::vector<std::string> prompts;  // one row each (text mode)
  bool chat = false;
  std::string system;
  std::string input_ids_file;   // ids mode: int64 input_ids / attention_mask [B, P]
  std::string output_ids_file;  // int64 output_ids [B, new_tokens]
  int64_t max_new_tokens = 32;
  SamplingOptions sampling;
  std::vector<std::string> stop;
  std::string dtype = "fp32";
  bool stream = true;
};

absl::Status RunGenerate(const GenerateRequest& request);

}  // namespace openmoe::tools

#endif  // TOOLS_GENERATE_RUNNER_H_
