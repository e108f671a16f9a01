#include "openmoe/train/expert_balance.h"

#include <algorithm>
#include <numeric>

#include <gtest/gtest.h>

namespace openmoe::train {
namespace {

// 8 experts on 2 positions, position 0's experts ten times as busy: worked by hand from the rule
// in the header (busiest a = 0, least busy b = 1; the best local index, lowest on ties).
//   round 1: every j gives max(40 - 10 + 1, 4 - 1 + 10) = 31 -> j = 0; loads 31 / 13
//   round 2: j = 0 would undo it (40); j = 1 gives max(22, 22) = 22 -> j = 1; loads 22 / 22
//   round 3: busiest == least busy (ties go to position 0): stop.
TEST(ExpertBalance, GreedySwapsOfTheBusiestPosition) {
  const ExpertPlacement start = ExpertPlacement::Identity(8, 2);
  const std::vector<int64_t> loads = {10, 10, 10, 10, 1, 1, 1, 1};
  EXPECT_EQ(start.PositionLoads(loads), (std::vector<int64_t>{40, 4}));
  const std::vector<ExpertSwap> swaps = PlanExpertSwaps(start, loads);
  ASSERT_EQ(swaps.size(), 2u);
  EXPECT_EQ(swaps[0].position_a, 0);
  EXPECT_EQ(swaps[0].position_b, 1);
  EXPECT_EQ(swaps[0].local, 0);
  EXPECT_EQ(swaps[1].position_a, 0);
  EXPECT_EQ(swaps[1].position_b, 1);
  EXPECT_EQ(swaps[1].local, 1);
  ExpertPlacement p = start;
  for (const ExpertSwap& s : swaps) p.Swap(s);
  EXPECT_EQ(p.PositionLoads(loads), (std::vector<int64_t>{22, 22}));
  EXPECT_EQ(p.slot_expert, (std::vector<int32_t>{4, 5, 2, 3, 0, 1, 6, 7}));
  for (int32_t e = 0; e < 8; ++e) EXPECT_EQ(p.slot_expert[p.expert_slot[e]], e) << "expert " << e;
  EXPECT_FALSE(p.identity());
  EXPECT_TRUE(start.identity());
}

// Balanced loads, or one position: nothing to do.
TEST(ExpertBalance, NoSwapWhenNothingImproves) {
  EXPECT_TRUE(PlanExpertSwaps(ExpertPlacement::Identity(8, 2), {1, 2, 3, 4, 4, 3, 2, 1}).empty());
  EXPECT_TRUE(PlanExpertSwaps(ExpertPlacement::Identity(8, 1), {9, 0, 0, 0, 0, 0, 0, 0}).empty());
}

// Four positions, one hot expert per position 0 and 1: every swap lowers the busiest position and
// the plan never raises the maximum; the result is still a permutation.
TEST(ExpertBalance, FourPositionsNeverWorse) {
  const ExpertPlacement start = ExpertPlacement::Identity(8, 4);
  const std::vector<int64_t> loads = {50, 40, 30, 1, 1, 1, 1, 1};
  ExpertPlacement p = start;
  const std::vector<int64_t> before = p.PositionLoads(loads);
  for (const ExpertSwap& s : PlanExpertSwaps(start, loads)) p.Swap(s);
  const std::vector<int64_t> after = p.PositionLoads(loads);
  EXPECT_LT(*std::max_element(after.begin(), after.end()), *std::max_element(before.begin(), before.end()));
  EXPECT_EQ(std::accumulate(after.begin(), after.end(), int64_t(0)), std::accumulate(loads.begin(), loads.end(), int64_t(0)));
  std::vector<int32_t> sorted = p.slot_expert;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, start.slot_expert);
}

}  // namespace
}  // namespace openmoe::train
