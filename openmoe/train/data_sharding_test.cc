// The data order of data-parallel ranks: one rank reproduces the single-device order (batch b =
// positions [b B, (b + 1) B) of EpochOrder); two ranks deal each global batch of 2B positions
// between them in turn, dropping the tail; every rank derives the same shuffled epoch order.
#include "openmoe/train/data_sharding.h"

#include <algorithm>
#include <set>

#include "gtest/gtest.h"
#include "openmoe/train/train_data.h"

namespace openmoe::train {
namespace {

DataSharding Make(int64_t n, int64_t b, DataParallelRank dp, uint64_t seed, bool shuffle) {
  absl::StatusOr<DataSharding> s = DataSharding::Create(n, b, dp, seed, shuffle);
  EXPECT_TRUE(s.ok()) << s.status();
  return *s;
}

TEST(DataSharding, OneRankIsTheSingleDeviceOrder) {
  for (const bool shuffle : {false, true}) {
    const int64_t N = 37, B = 4;
    DataSharding s = Make(N, B, {0, 1}, 5, shuffle);
    EXPECT_EQ(s.batches_per_epoch(), N / B);
    for (int64_t epoch = 0; epoch < 3; ++epoch) {
      const std::vector<int64_t> order = EpochOrder(N, 5, epoch, shuffle);
      for (int64_t b = 0; b < s.batches_per_epoch(); ++b) {
        EXPECT_EQ(s.Batch(epoch, b), std::vector<int64_t>(order.begin() + b * B, order.begin() + (b + 1) * B))
            << "shuffle " << shuffle << " epoch " << epoch << " batch " << b;
      }
    }
  }
}

TEST(DataSharding, TwoRanksPartitionEachGlobalBatchInterleaved) {
  const int64_t N = 37, B = 4, D = 2;  // 18 examples per rank (one dropped), 4 batches (2 dropped)
  for (const bool shuffle : {false, true}) {
    DataSharding r0 = Make(N, B, {0, D}, 9, shuffle), r1 = Make(N, B, {1, D}, 9, shuffle);
    EXPECT_EQ(r0.examples_per_rank(), 18);
    EXPECT_EQ(r0.batches_per_epoch(), 4);
    EXPECT_EQ(r1.batches_per_epoch(), 4);
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      const std::vector<int64_t> order = EpochOrder(N, 9, epoch, shuffle);
      for (int64_t b = 0; b < r0.batches_per_epoch(); ++b) {
        const std::vector<int64_t> a = r0.Batch(epoch, b), c = r1.Batch(epoch, b);
        for (int64_t i = 0; i < B; ++i) {  // rank r takes positions r, r + D, ... of the global batch
          EXPECT_EQ(a[i], order[b * B * D + i * D + 0]);
          EXPECT_EQ(c[i], order[b * B * D + i * D + 1]);
        }
        std::set<int64_t> both(a.begin(), a.end());
        both.insert(c.begin(), c.end());
        EXPECT_EQ(both.size(), size_t(2 * B)) << "the ranks' batches overlap";
        EXPECT_EQ(both, std::set<int64_t>(order.begin() + b * B * D, order.begin() + (b + 1) * B * D));
      }
    }
  }
}

TEST(DataSharding, EveryRankDerivesTheSameShuffledEpochOrder) {
  const int64_t N = 40, D = 4;
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> dealt(N);
    for (int64_t r = 0; r < D; ++r) {
      const std::vector<int64_t> mine = Make(N, 2, {r, D}, 11, true).RankOrder(epoch);
      ASSERT_EQ(int64_t(mine.size()), N / D);
      for (int64_t i = 0; i < N / D; ++i) dealt[i * D + r] = mine[i];
    }
    EXPECT_EQ(dealt, EpochOrder(N, 11, epoch, true)) << "epoch " << epoch;
  }
  EXPECT_NE(Make(N, 2, {0, D}, 11, true).RankOrder(0), Make(N, 2, {0, D}, 11, true).RankOrder(1));
}

TEST(DataSharding, RefusesTooFewExamplesAndBadRanks) {
  EXPECT_EQ(DataSharding::Create(7, 8, {0, 1}, 1, true).status().message(),
            "--dataset has 7 examples, fewer than one batch of --batch_size 8");
  EXPECT_NE(DataSharding::Create(15, 8, {1, 2}, 1, true).status().message().find("on each of 2 data-parallel ranks"),
            std::string::npos);
  EXPECT_TRUE(DataSharding::Create(16, 8, {1, 2}, 1, true).ok());
  EXPECT_FALSE(DataSharding::Create(16, 8, {2, 2}, 1, true).ok());
  EXPECT_FALSE(DataSharding::Create(16, 8, {0, 0}, 1, true).ok());
}

TEST(DataSharding, GatherRowsCopiesIdsAndMask) {
  io::TokenBatch data;
  data.batch = 3, data.seq_len = 2;
  data.ids = {10, 11, 20, 21, 30, 31}, data.mask = {1, 1, 1, 0, 0, 0};
  const io::TokenBatch rows = GatherRows(data, {2, 0});
  EXPECT_EQ(rows.batch, 2);
  EXPECT_EQ(rows.seq_len, 2);
  EXPECT_EQ(rows.ids, (std::vector<int64_t>{30, 31, 10, 11}));
  EXPECT_EQ(rows.mask, (std::vector<int64_t>{0, 0, 1, 1}));
}

}  // namespace
}  // namespace openmoe::train
