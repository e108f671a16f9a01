// File: openmoe/io/token_batch.h
// A batch of token ids as the tools read it: a safetensors file with int64 (or int32)
// `input_ids` [B, S] and optionally `attention_mask` [B, S] (1 = token, 0 = padding; all 1 when
// absent). Errors name the flag the file came from.
#ifndef OPENMOE_IO_TOKEN_BATCH_H_
#define OPENMOE_IO_TOKEN_BATCH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace openmoe::io {

struct TokenBatch {
  std::vector<int64_t> ids, mask;  // [B, S] row-major
  int64_t batch = 0, seq_len = 0;
};

absl::StatusOr<TokenBatch> ReadTokenBatch(const std::string& path, const std::string& flag);

}  // namespace openmoe::io

#endif  // OPENMOE_IO_TOKEN_BATCH_H_
