// The optimizer against the model it updates (tiny8b fixture weights, a fixed batch): a bf16 run
// whose AdamW writes the 16-bit working copy (AdamWStepAndCast) computes the next steps exactly as
// one whose model converts its masters again (InvalidateWorkingCopy before every step): losses and
// weights bit-identical over three steps. A compute dtype other than the model's is refused before
// anything changes.
#include "openmoe/train/optimizer.h"

#include <vector>

#include "gtest/gtest.h"

namespace openmoe::train {
namespace {

using Dtype = TrainModel::ComputeDtype;

std::vector<int64_t> Batch(int64_t B, int64_t S, int64_t V) {  // fixed ids in [3, V), <pad> first
  std::vector<int64_t> ids(B * S);
  for (int64_t i = 0; i < B * S; ++i) ids[i] = i % S == 0 ? 0 : 3 + (i * 37) % (V - 3);
  return ids;
}

std::vector<float> Weights(const TrainModel& model) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), model.flat_params());
  return std::vector<float>(host.data(), host.data() + host.extent(0));
}

TEST(AdamWOptimizer, FusedCastStepsEqualReconvertedSteps) {
  auto fused = TrainModel::Load("tests/data/openmoe/tiny8b"), reconverted = TrainModel::Load("tests/data/openmoe/tiny8b");
  ASSERT_TRUE(fused.ok() && reconverted.ok());
  OptimizerOptions options;
  options.adamw.lr = 1e-2, options.max_grad_norm = 1.0, options.compute_dtype = Dtype::kBf16;
  fused->set_compute_dtype(Dtype::kBf16), reconverted->set_compute_dtype(Dtype::kBf16);
  AdamWOptimizer opt_fused(fused->layout(), options), opt_reconverted(reconverted->layout(), options);
  const int64_t B = 2, S = 8;
  const std::vector<int64_t> ids = Batch(B, S, fused->config().vocab_size), mask(B * S, 1);
  for (int step = 0; step < 3; ++step) {
    reconverted->InvalidateWorkingCopy();  // this model converts its masters again every step
    auto a = fused->ForwardBackward(ids, mask, B, S), b = reconverted->ForwardBackward(ids, mask, B, S);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(a->total, b->total) << "step " << step;
    ASSERT_TRUE(opt_fused.Step(*fused, 1e-2, true).ok());
    ASSERT_TRUE(opt_reconverted.Step(*reconverted, 1e-2, true).ok());
  }
  EXPECT_EQ(Weights(*fused), Weights(*reconverted));
}

TEST(AdamWOptimizer, RefusesAComputeDtypeOtherThanTheModels) {
  auto model = TrainModel::Load("tests/data/openmoe/tiny8b");
  ASSERT_TRUE(model.ok());
  OptimizerOptions options;
  options.compute_dtype = Dtype::kBf16;  // the model computes in fp32
  AdamWOptimizer optimizer(model->layout(), options);
  const std::vector<float> before = Weights(*model);
  absl::StatusOr<OptimizerStepResult> r = optimizer.Step(*model, 1e-2, true);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("compute dtype"), std::string::npos) << r.status();
  EXPECT_EQ(optimizer.steps(), 0);
  EXPECT_EQ(Weights(*model), before);
}

}  // namespace
}  // namespace openmoe::train
