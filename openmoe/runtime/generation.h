// File: openmoe/runtime/generation.h
// Autoregressive generation with the KV cache: one prefill Step over the prompt (one routing
// group), then one Step per new token whose B tokens form their own routing group, as the
// fixtures' gen_greedy_ids define. Finished rows keep being fed <pad> (as HF generate does) and
// emit <pad>. On pipeline stages (OpenMoeModel::LoadStage) the last stage chooses each step's
// tokens (greedy or sampled with its generator) and the model's ShareStepIds hands them to the
// other stages, so every stage feeds, stops and returns the same ids.
//
//   GenerationOptions options;  options.max_new_tokens = 32;
//   OPENMOE_ASSIGN_OR_RETURN(GenerationResult r, Generate(model, ids, mask, B, P, options));
//   // r.ids is [B, r.steps]
#ifndef OPENMOE_RUNTIME_GENERATION_H_
#define OPENMOE_RUNTIME_GENERATION_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "openmoe/model.h"
#include "openmoe/runtime/sampling.h"

namespace openmoe {

struct GenerationOptions {
  int64_t max_new_tokens = 32;
  SamplingOptions sampling;
  RoutingMode mode      = RoutingMode::kEval;
  int64_t allowed_vocab = 0;  // ids >= this are never produced; 0 = the model's vocab_size
  // After each step, with the B ids just produced (<pad> for rows already finished).
  std::function<void(const std::vector<int64_t>& step_ids)> on_step;
  // Extra per-row stop rule on the row's generated ids (e.g. a --stop string, the text "</s>").
  std::function<bool(int64_t row, const std::vector<int64_t>& generated)> row_done;
};

struct GenerationResult {
  std::vector<int64_t> ids;  // [B, steps], row-major
  int64_t batch = 0, steps = 0;
  double prefill_seconds = 0, decode_seconds = 0;  // decode: all steps after the first token
};

template <class ExecSpace, class T>
absl::StatusOr<GenerationResult> Generate(OpenMoeModel<ExecSpace, T>& model,
                                          const std::vector<int64_t>& prompt_ids,
                                          const std::vector<int64_t>& prompt_mask, int64_t batch,
                                          int64_t prompt_len, const GenerationOptions& options);

}  // namespace openmoe

#endif  // OPENMOE_RUNTIME_GENERATION_H_
