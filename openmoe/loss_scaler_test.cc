// LossScaler against Colossal-AI's DynamicGradScaler rules, step by step.
#include "openmoe/loss_scaler.h"

#include "gtest/gtest.h"

namespace openmoe {
namespace {

TEST(LossScalerTest, DefaultsAreUpstreams) {
  LossScaler scaler;
  EXPECT_EQ(scaler.scale(), 65536.0);
  EXPECT_FALSE(scaler.AtMinimum());
}

TEST(LossScalerTest, BacksOffAfterHysteresisOverflowsAndSkipsThem) {
  LossScaler scaler;
  EXPECT_FALSE(scaler.Update(false));  // first overflow: skipped, scale kept (hysteresis 2)
  EXPECT_EQ(scaler.scale(), 65536.0);
  EXPECT_FALSE(scaler.Update(false));  // second: skipped, halved
  EXPECT_EQ(scaler.scale(), 32768.0);
  EXPECT_FALSE(scaler.Update(false));
  EXPECT_EQ(scaler.scale(), 32768.0);
  EXPECT_FALSE(scaler.Update(false));
  EXPECT_EQ(scaler.scale(), 16384.0);
}

TEST(LossScalerTest, GrowsAfterIntervalOfFiniteStepsUpToMax) {
  LossScalerOptions options;
  options.growth_interval = 3, options.max_scale = 4.0, options.initial_scale = 1.0;
  LossScaler scaler(options);
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(scaler.Update(true));
  EXPECT_EQ(scaler.scale(), 1.0);
  EXPECT_TRUE(scaler.Update(true));
  EXPECT_EQ(scaler.scale(), 2.0);
  EXPECT_TRUE(scaler.Update(false) == false);  // an overflow restarts the growth count
  for (int i = 0; i < 2; ++i) scaler.Update(true);
  EXPECT_EQ(scaler.scale(), 2.0);
  scaler.Update(true);
  EXPECT_EQ(scaler.scale(), 4.0);
  for (int i = 0; i < 3; ++i) scaler.Update(true);
  EXPECT_EQ(scaler.scale(), 4.0);  // capped
}

TEST(LossScalerTest, StopsAtMinimumAndRestoresState) {
  LossScalerOptions options;
  options.initial_scale = 4.0, options.hysteresis = 1;
  LossScaler scaler(options);
  scaler.Update(false);
  scaler.Update(false);
  EXPECT_EQ(scaler.scale(), 1.0);
  EXPECT_TRUE(scaler.AtMinimum());
  scaler.Update(false);
  EXPECT_EQ(scaler.scale(), 1.0);  // never below min_scale
  LossScaler other;
  other.Restore({8.0, 5, 1});
  EXPECT_EQ(other.scale(), 8.0);
  EXPECT_EQ(other.state().growth_steps, 5);
  EXPECT_FALSE(other.Update(false));  // 1 + 1 overflows reach the hysteresis
  EXPECT_EQ(other.scale(), 4.0);
}

}  // namespace
}  // namespace openmoe
