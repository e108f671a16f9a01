// File: openmoe/runtime/sampling.h
// Next-token selection from one row of float32 logits: greedy, or sampling with temperature,
// top-k, top-p (nucleus) and a repetition penalty, as Hugging Face's logits processors define
// them. Host code; deterministic for a given seed.
#ifndef OPENMOE_RUNTIME_SAMPLING_H_
#define OPENMOE_RUNTIME_SAMPLING_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"

namespace openmoe {

struct SamplingOptions {
  bool greedy              = true;
  float temperature        = 1.0f;  // > 0
  int64_t top_k            = 0;     // 0 = off
  float top_p              = 1.0f;  // in (0, 1]; 1 = off
  float repetition_penalty = 1.0f;  // HF: score / p if score > 0 else score * p, for seen tokens
  uint64_t seed            = 0;
};

absl::Status ValidateSampling(const SamplingOptions& options);

// logits [V]: picks an id in [0, allowed_vocab) (ids at or above it, e.g. the padding of the
// umT5 vocabulary 256000..256383, are never chosen). `history` holds the ids already in the row
// (prompt and generated) for the repetition penalty.
int64_t SelectToken(const float* logits, int64_t allowed_vocab, const std::vector<int64_t>& history,
                    const SamplingOptions& options, std::mt19937_64& rng);

}  // namespace openmoe

#endif  // OPENMOE_RUNTIME_SAMPLING_H_
