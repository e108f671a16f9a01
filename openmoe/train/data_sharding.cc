#include "openmoe/train/data_sharding.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "openmoe/train/train_data.h"

namespace openmoe::train {

absl::Status ValidateDataParallelRank(const DataParallelRank& dp) {
  if (dp.size < 1 || dp.rank < 0 || dp.rank >= dp.size) {
    return absl::InvalidArgumentError(absl::StrCat("data-parallel rank ", dp.rank, " of ", dp.size,
                                                   ": need size >= 1 and 0 <= rank < size"));
  }
  return absl::OkStatus();
}

absl::StatusOr<DataSharding> DataSharding::Create(int64_t examples, int64_t batch_size, DataParallelRank dp, uint64_t seed,
                                                  bool shuffle) {
  if (absl::Status status = ValidateDataParallelRank(dp); !status.ok()) return status;
  if (batch_size <= 0) return absl::InvalidArgumentError(absl::StrCat("--batch_size must be positive, got ", batch_size));
  if (examples / dp.size < batch_size) {
    return absl::InvalidArgumentError(absl::StrCat("--dataset has ", examples, " examples, fewer than one batch of --batch_size ",
                                                   batch_size, dp.size > 1 ? absl::StrCat(" on each of ", dp.size, " data-parallel ranks") : ""));
  }
  DataSharding sharding;
  sharding.examples_ = examples, sharding.batch_size_ = batch_size, sharding.dp_ = dp;
  sharding.seed_ = seed, sharding.shuffle_ = shuffle;
  return sharding;
}

std::vector<int64_t> DataSharding::RankOrder(int64_t epoch) const {
  const std::vector<int64_t> order = EpochOrder(examples_, seed_, epoch, shuffle_);
  std::vector<int64_t> mine(examples_per_rank());
  for (int64_t i = 0; i < int64_t(mine.size()); ++i) mine[i] = order[i * dp_.size + dp_.rank];
  return mine;
}

std::vector<int64_t> DataSharding::Batch(int64_t epoch, int64_t batch) {
  if (epoch != cached_epoch_) cached_order_ = RankOrder(epoch), cached_epoch_ = epoch;
  return std::vector<int64_t>(cached_order_.begin() + batch * batch_size_, cached_order_.begin() + (batch + 1) * batch_size_);
}

io::TokenBatch GatherRows(const io::TokenBatch& data, const std::vector<int64_t>& rows) {
  const int64_t S = data.seq_len, count = int64_t(rows.size());
  io::TokenBatch out;
  out.batch = count, out.seq_len = S;
  out.ids.resize(count * S), out.mask.resize(count * S);
  for (int64_t r = 0; r < count; ++r) {
    std::copy(data.ids.begin() + rows[r] * S, data.ids.begin() + (rows[r] + 1) * S, out.ids.begin() + r * S);
    std::copy(data.mask.begin() + rows[r] * S, data.mask.begin() + (rows[r] + 1) * S, out.mask.begin() + r * S);
  }
  return out;
}

}  // namespace openmoe::train
