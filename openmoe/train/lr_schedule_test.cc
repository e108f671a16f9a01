// Learning rates of the schedule: linear warmup, then constant or cosine to 0 at the last step.
#include "openmoe/train/lr_schedule.h"

#include <cmath>

#include "gtest/gtest.h"

namespace openmoe::train {
namespace {

using Decay = LrSchedule::Decay;

TEST(LrSchedule, ConstantWithoutWarmupIsThePeak) {
  const LrSchedule s{1e-5, 0, Decay::kConstant, 10};
  for (int64_t step : {1, 5, 10, 11}) EXPECT_EQ(s.At(step), 1e-5);
}

TEST(LrSchedule, WarmupRisesLinearlyToThePeak) {
  const LrSchedule s{2e-3, 20, Decay::kConstant, 440};
  EXPECT_DOUBLE_EQ(s.At(1), 1e-4);
  EXPECT_DOUBLE_EQ(s.At(10), 1e-3);
  EXPECT_EQ(s.At(20), 2e-3);
  EXPECT_EQ(s.At(21), 2e-3);
  EXPECT_EQ(s.At(440), 2e-3);
}

TEST(LrSchedule, CosineDecaysToZeroAtTheLastStep) {
  const LrSchedule s{2e-3, 20, Decay::kCosine, 440};  // the default run's
  EXPECT_DOUBLE_EQ(s.At(20), 2e-3);                   // end of warmup
  EXPECT_DOUBLE_EQ(s.At(230), 1e-3);                  // half way: t = 0.5
  EXPECT_DOUBLE_EQ(s.At(125), 2e-3 * 0.5 * (1 + std::cos(M_PI * 0.25)));
  EXPECT_EQ(s.At(440), 0.0);
  EXPECT_EQ(s.At(500), 0.0);  // t is capped at 1
  for (int64_t step = 21; step < 440; ++step) EXPECT_LT(s.At(step + 1), s.At(step)) << step;
}

TEST(LrSchedule, CosineWithoutWarmupStartsBelowThePeak) {
  const LrSchedule s{1.0, 0, Decay::kCosine, 4};
  EXPECT_DOUBLE_EQ(s.At(1), 0.5 * (1 + std::cos(M_PI * 0.25)));
  EXPECT_DOUBLE_EQ(s.At(2), 0.5);
  EXPECT_EQ(s.At(4), 0.0);
}

}  // namespace
}  // namespace openmoe::train
