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
  options.growth_interval = 3, options.max_scale = 4.0, options.initial_scale = 1.0;  // hysteresis 2
  LossScaler scaler(options);
  // By hand from the rules: growth after 3 finite steps in a row; an overflow (the first of 2, so
  // no backoff) restarts the count, so the growth after it needs 3 more finite steps.
  struct Step {
    bool finite;
    bool applied;         // Update's result
    double scale;         // after the step
    int64_t growth_steps;  // finite steps counted towards the next growth, after the step
  };
  const Step steps[] = {
      {true, true, 1.0, 1},   {true, true, 1.0, 2},   {true, true, 2.0, 0},   // grows
      {true, true, 2.0, 1},   {true, true, 2.0, 2},                           // one short of growing
      {false, false, 2.0, 0},                                                 // overflow: count restarts
      {true, true, 2.0, 1},                                                   // (no restart: would grow here)
      {true, true, 2.0, 2},   {true, true, 4.0, 0},                           // a whole interval again
      {true, true, 4.0, 1},   {true, true, 4.0, 2},   {true, true, 4.0, 0},   // capped at max_scale
  };
  for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); ++i) {
    const Step& want = steps[i];
    EXPECT_EQ(scaler.Update(want.finite), want.applied) << "step " << i;
    EXPECT_EQ(scaler.scale(), want.scale) << "step " << i;
    EXPECT_EQ(scaler.state().growth_steps, want.growth_steps) << "step " << i;
  }
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
