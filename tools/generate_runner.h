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
  std::string output_logits_file;  // float32 prompt_logits [B, P, V]: one forward pass over the prompt
  int64_t max_new_tokens = 32;
  SamplingOptions sampling;
  std::vector<std::string> stop;
  std::string dtype = "fp32";
  bool stream = true;
  // Several ranks under mpirun (world_size > 1; the tool has started MPI): "expert" splits the
  // experts over the ranks (every rank holds the dense layers and the whole batch; see
  // parallel/inference_expert_dispatcher.h); "pipeline" makes rank r of N the pipeline stage with
  // layers [r L / N, (r + 1) L / N) (OpenMoeModel::LoadStage: only their weights and KV cache; the
  // embedding on rank 0, the head on rank N - 1, which picks each step's tokens and broadcasts
  // them). Rank 0 reads and tokenizes the prompts and broadcasts them; only rank 0 prints text and
  // writes output_ids_file (and output_logits_file, sent to it by the last stage). Every rank
  // produces the same ids each step (checked each step: a difference ends the job).
  std::string parallel;
  int world_rank = 0, world_size = 1;
};

absl::Status RunGenerate(const GenerateRequest& request);

}  // namespace openmoe::tools

#endif  // TOOLS_GENERATE_RUNNER_H_
