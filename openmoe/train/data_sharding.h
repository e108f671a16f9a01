// File: openmoe/train/data_sharding.h
// Which examples each data-parallel rank trains on, in which order (PyTorch's DistributedSampler
// with drop_last, under a DataLoader with drop_last):
//   - every epoch has one order of the N examples, shared by all ranks: a permutation drawn from
//     (seed, epoch) when shuffling, file order otherwise (openmoe::EpochOrder);
//   - rank r of D takes positions r, r + D, r + 2D, ... of that order, floor(N / D) examples (the
//     tail that does not fill one example per rank is dropped);
//   - its batch b is its examples [b * B, (b + 1) * B); a last incomplete batch is dropped.
// Global batch b (B * D examples) is thus positions [b * B * D, (b + 1) * B * D) of the epoch
// order, dealt to the ranks in turn. With D = 1, batch b is positions [b * B, (b + 1) * B).
#ifndef OPENMOE_TRAIN_DATA_SHARDING_H_
#define OPENMOE_TRAIN_DATA_SHARDING_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/io/token_batch.h"

namespace openmoe::train {

// This process's place among the data-parallel ranks.
struct DataParallelRank {
  int64_t rank = 0, size = 1;
};

// 0 <= rank < size.
absl::Status ValidateDataParallelRank(const DataParallelRank& dp);

class DataSharding {
 public:
  DataSharding() = default;
  // `examples` in the dataset, `batch_size` of them per rank and step. An error when a rank gets
  // less than one batch per epoch.
  static absl::StatusOr<DataSharding> Create(int64_t examples, int64_t batch_size, DataParallelRank dp, uint64_t seed,
                                             bool shuffle);

  int64_t examples() const { return examples_; }
  int64_t batch_size() const { return batch_size_; }
  const DataParallelRank& rank() const { return dp_; }
  int64_t examples_per_rank() const { return examples_ / dp_.size; }
  int64_t batches_per_epoch() const { return examples_per_rank() / batch_size_; }

  // This rank's examples of `epoch` (0-based), in order: [examples_per_rank()].
  std::vector<int64_t> RankOrder(int64_t epoch) const;
  // The examples of this rank's batch `batch` of `epoch`: [batch_size()] (the epoch's order is
  // kept for the next call).
  std::vector<int64_t> Batch(int64_t epoch, int64_t batch);

 private:
  int64_t examples_ = 0, batch_size_ = 1;
  DataParallelRank dp_;
  uint64_t seed_ = 0;
  bool shuffle_ = false;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> cached_order_;
};

// Rows `rows` of `data`: input ids and attention mask [rows.size(), data.seq_len].
io::TokenBatch GatherRows(const io::TokenBatch& data, const std::vector<int64_t>& rows);

}  // namespace openmoe::train

#endif  // OPENMOE_TRAIN_DATA_SHARDING_H_
