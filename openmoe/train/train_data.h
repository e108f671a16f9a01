// File: openmoe/train/train_data.h
// Training data for //tools:train, as upstream's train.py builds it (spec section 6.3):
//   - self_instruct-style records {"prompt": ..., "completion": ...} from a local .jsonl (one
//     object per line) or .json (an array of objects) file, the format of yizhongw/self_instruct
//     and super_natural_instructions exports;
//   - text = "<pad>" + prompt + completion (no separator, no EOS), tokenized with the model's
//     SentencePiece, right-padded with <pad> (mask 0) or truncated to max_length; labels are the
//     inputs shifted by one, padding not masked (the loss does that part);
//   - or pre-tokenized batches: a safetensors file with int64 input_ids, attention_mask [N, S]
//     (no tokenizer needed).
// Batches follow an epoch order: a permutation drawn from (seed, epoch) when shuffling, file
// order otherwise; the last incomplete batch is dropped (drop_last=True).
#ifndef OPENMOE_TRAIN_TRAIN_DATA_H_
#define OPENMOE_TRAIN_TRAIN_DATA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "openmoe/io/token_batch.h"
#include "openmoe/text/tokenizer.h"

namespace openmoe {

struct InstructionRecord {
  std::string prompt, completion;
};

// Errors name the file and the line (JSONL) or record index (JSON) of malformed JSON, a record
// that is not an object, or a missing / non-string "prompt" or "completion"; an empty dataset is
// an error too.
absl::StatusOr<std::vector<InstructionRecord>> ReadInstructionRecords(const std::string& path);

// Token rows [N, max_length] of the records (see the file comment).
absl::StatusOr<io::TokenBatch> TokenizeRecords(const std::vector<InstructionRecord>& records,
                                               const Tokenizer& tokenizer, int64_t max_length);

// The order of the N examples in `epoch` (0-based): a permutation drawn from seed and epoch when
// shuffle, 0..N-1 otherwise.
std::vector<int64_t> EpochOrder(int64_t count, uint64_t seed, int64_t epoch, bool shuffle);

}  // namespace openmoe

#endif  // OPENMOE_TRAIN_TRAIN_DATA_H_
