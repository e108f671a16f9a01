#include "openmoe/runtime/generation.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "kernels/instantiate.h"
#include "openmoe/core/status_macros.h"

namespace openmoe {

template <class ExecSpace, class T>
absl::StatusOr<GenerationResult> Generate(OpenMoeModel<ExecSpace, T>& model,
                                          const std::vector<int64_t>& prompt_ids,
                                          const std::vector<int64_t>& prompt_mask, int64_t B,
                                          int64_t P, const GenerationOptions& options) {
  const OpenMoeConfig& config = model.config();
  OPENMOE_RETURN_IF_ERROR(ValidateSampling(options.sampling));
  if (options.max_new_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("--max_new_tokens must be positive, got ", options.max_new_tokens));
  }
  if (P + options.max_new_tokens > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt (", P, " tokens) plus --max_new_tokens (", options.max_new_tokens,
        ") exceeds the model's context of ", config.max_position_embeddings, " tokens"));
  }
  OPENMOE_RETURN_IF_ERROR(ValidateInputs(config, prompt_ids, prompt_mask, B, P));
  const int64_t V = config.vocab_size;
  const int64_t allowed = options.allowed_vocab > 0 ? std::min(options.allowed_vocab, V) : V;
  OPENMOE_ASSIGN_OR_RETURN(auto cache, model.NewCache(B, P + options.max_new_tokens));

  std::mt19937_64 rng(options.sampling.seed);
  std::vector<std::vector<int64_t>> history(B), generated(B);
  for (int64_t b = 0; b < B; ++b) history[b].assign(prompt_ids.begin() + b * P, prompt_ids.begin() + (b + 1) * P);
  std::vector<bool> finished(B, false);
  GenerationResult result;
  result.batch = B;

  // Greedy without a repetition penalty picks on the device (only B ids come back); everything
  // else samples on the host from the last column's logits.
  const bool device_greedy = options.sampling.greedy && options.sampling.repetition_penalty == 1.0f;
  std::vector<float> logits;        // [B, V] (host sampling)
  std::vector<int64_t> greedy_ids;  // [B]   (device greedy)
  auto run_step = [&](const std::vector<int64_t>& ids, const std::vector<int64_t>& mask, int64_t S) -> absl::Status {
    if (device_greedy) {
      OPENMOE_ASSIGN_OR_RETURN(greedy_ids, model.StepGreedy(cache, ids, mask, S, options.mode, allowed));
    } else {
      OPENMOE_ASSIGN_OR_RETURN(logits, model.Step(cache, ids, mask, S, options.mode, /*last_only=*/true));
    }
    return absl::OkStatus();
  };
  const auto start = std::chrono::steady_clock::now();
  OPENMOE_RETURN_IF_ERROR(run_step(prompt_ids, prompt_mask, P));
  auto first_token = std::chrono::steady_clock::now();
  result.prefill_seconds = std::chrono::duration<double>(first_token - start).count();

  // Pipeline stages: the last one (the LM head) picks the tokens, ShareStepIds gives them to all.
  const bool picks = model.holds_lm_head();
  std::vector<int64_t> step_ids(B), ones(B, 1);
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    for (int64_t b = 0; b < B; ++b) {
      step_ids[b] = finished[b] || !picks ? config.pad_token_id
                    : device_greedy       ? greedy_ids[b]
                                          : SelectToken(logits.data() + b * V, allowed, history[b], options.sampling, rng);
    }
    OPENMOE_RETURN_IF_ERROR(model.ShareStepIds(step_ids));
    for (int64_t b = 0; b < B; ++b) {
      if (!finished[b]) {
        history[b].push_back(step_ids[b]);
        generated[b].push_back(step_ids[b]);
        if (step_ids[b] == config.eos_token_id || (options.row_done && options.row_done(b, generated[b]))) {
          finished[b] = true;
        }
      }
    }
    model.profile().Mark(Kokkos::DefaultHostExecutionSpace(), "sampling (host)");
    result.ids.insert(result.ids.end(), step_ids.begin(), step_ids.end());  // [steps, B] for now
    ++result.steps;
    if (options.on_step) options.on_step(step_ids);
    if (std::all_of(finished.begin(), finished.end(), [](bool f) { return f; })) break;
    if (step + 1 == options.max_new_tokens) break;
    OPENMOE_RETURN_IF_ERROR(run_step(step_ids, ones, 1));
  }
  result.decode_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - first_token).count();
  std::vector<int64_t> by_row(B * result.steps);  // [steps, B] -> [B, steps]
  for (int64_t s = 0; s < result.steps; ++s)
    for (int64_t b = 0; b < B; ++b) by_row[b * result.steps + s] = result.ids[s * B + b];
  result.ids = std::move(by_row);
  return result;
}

#define OPENMOE_INSTANTIATE_GENERATE(Space, T)                                                \
  template absl::StatusOr<GenerationResult> Generate<Space, T>(                               \
      OpenMoeModel<Space, T>&, const std::vector<int64_t>&, const std::vector<int64_t>&, int64_t, \
      int64_t, const GenerationOptions&);
OPENMOE_FOR_EACH_SPACE_AND_DTYPE(OPENMOE_INSTANTIATE_GENERATE)

}  // namespace openmoe
