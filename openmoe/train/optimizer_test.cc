// The optimizer against the model it updates (tiny8b fixture weights, a fixed batch): a bf16 run
// whose AdamW writes the 16-bit working copy (AdamWStepAndCast) computes the next steps exactly as
// one whose model converts its masters again (InvalidateWorkingCopy before every step): losses and
// weights bit-identical over three steps. A compute dtype other than the model's is refused before
// anything changes. Sharded fp32 masters (ZeRO-1 of a bf16 run over a one-rank communicator, so the
// partition is a chunk and a tail): the optimizer's pieces are the model's, the steps equal ZeRO-0's
// bit for bit (gathered masters, working copy, losses), and misuse is refused with a message: an
// fp32 model's masters cannot be sharded, a ZeRO-1 16-bit optimizer refuses whole masters, and a
// sharded model has no whole flat_params().
#include "openmoe/train/optimizer.h"

#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/comm/single_rank.h"

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

std::vector<uint16_t> WorkingBits(TrainModel& model) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), model.flat_working());
  return std::vector<uint16_t>(host.data(), host.data() + host.extent(0));
}

ZeroSharding OneRankZero1() { return {1, std::make_shared<comm::SingleRankCommunicator<TrainSpace>>()}; }

TEST(AdamWOptimizer, ShardedMastersStepAsWholeOnes) {
  auto sharded = TrainModel::Load("tests/data/openmoe/tiny8b"), whole = TrainModel::Load("tests/data/openmoe/tiny8b");
  ASSERT_TRUE(sharded.ok() && whole.ok());
  OptimizerOptions options;
  options.adamw.lr = 1e-2, options.max_grad_norm = 1.0, options.compute_dtype = Dtype::kBf16;
  sharded->set_compute_dtype(Dtype::kBf16), whole->set_compute_dtype(Dtype::kBf16);
  AdamWOptimizer opt_sharded(sharded->layout(), options, OneRankZero1()), opt_whole(whole->layout(), options);
  ASSERT_TRUE(opt_sharded.shards_masters());
  ASSERT_FALSE(opt_whole.shards_masters());
  ASSERT_TRUE(opt_whole.ShardMasters(*whole).ok());  // nothing to do
  ASSERT_FALSE(whole->masters_sharded());
  ASSERT_TRUE(opt_sharded.ShardMasters(*sharded).ok());
  ASSERT_TRUE(sharded->masters_sharded());
  // One rank: the chunk (a multiple of 64) and the tail, kept at the moments' offsets.
  const int64_t total = sharded->layout().total(), chunk = total / 64 * 64;
  const std::vector<TrainModel::MasterPiece> pieces = sharded->OwnedMasters(0, total);
  ASSERT_EQ(pieces.size(), chunk == total ? 1u : 2u);
  EXPECT_EQ(pieces[0].layout, 0);
  EXPECT_EQ(pieces[0].master, 0);
  EXPECT_EQ(pieces[0].count, chunk);
  EXPECT_EQ(int64_t(sharded->flat_masters().extent(0)), total);
  EXPECT_EQ(int64_t(opt_sharded.flat_m().extent(0)), total);
  const int64_t B = 2, S = 8;
  const std::vector<int64_t> ids = Batch(B, S, whole->config().vocab_size), mask(B * S, 1);
  for (int step = 0; step < 3; ++step) {
    auto a = sharded->ForwardBackward(ids, mask, B, S), b = whole->ForwardBackward(ids, mask, B, S);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
    ASSERT_EQ(a->total, b->total) << "step " << step;
    ASSERT_TRUE(opt_sharded.Step(*sharded, 1e-2, true).ok());
    ASSERT_TRUE(opt_whole.Step(*whole, 1e-2, true).ok());
  }
  absl::StatusOr<Vector<float, TrainSpace>> gathered = opt_sharded.GatherMasters(*sharded, 0, total);
  ASSERT_TRUE(gathered.ok()) << gathered.status();
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), *gathered);
  EXPECT_EQ(std::vector<float>(host.data(), host.data() + total), Weights(*whole));
  EXPECT_EQ(WorkingBits(*sharded), WorkingBits(*whole));
}

TEST(AdamWOptimizer, RefusesMastersNotShardedAsItsPartition) {
  auto fp32 = TrainModel::Load("tests/data/openmoe/tiny8b"), bf16_model = TrainModel::Load("tests/data/openmoe/tiny8b");
  ASSERT_TRUE(fp32.ok() && bf16_model.ok());
  // fp32 runs compute with their masters: they stay whole.
  absl::Status status = fp32->ShardMasters({{0, 0, 64}});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(status.message()).find("must stay whole"), std::string::npos) << status;
  // A ZeRO-1 bf16 optimizer updates only this rank's masters: whole ones are refused before any change.
  OptimizerOptions options;
  options.compute_dtype = Dtype::kBf16;
  bf16_model->set_compute_dtype(Dtype::kBf16);
  AdamWOptimizer optimizer(bf16_model->layout(), options, OneRankZero1());
  const std::vector<float> before = Weights(*bf16_model);
  absl::StatusOr<OptimizerStepResult> r = optimizer.Step(*bf16_model, 1e-2, true);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("ShardMasters"), std::string::npos) << r.status();
  EXPECT_EQ(optimizer.steps(), 0);
  EXPECT_EQ(Weights(*bf16_model), before);
  // Pieces that do not tile the kept buffer in order are refused; sharded masters have no whole view.
  EXPECT_EQ(bf16_model->ShardMasters({{64, 64, 64}}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(bf16_model->ShardMasters({{0, 0, 64}, {128, 64, 64}}).ok());
  EXPECT_EQ(int64_t(bf16_model->flat_masters().extent(0)), 128);
  EXPECT_EQ(bf16_model->ShardMasters({{0, 0, 64}}).code(), absl::StatusCode::kFailedPrecondition);  // once
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";  // re-runs the test in a child: no fork of threads
  EXPECT_DEATH(bf16_model->flat_params(), "keeps only its share of the fp32 master weights");
}

// Pieces whose layout offsets differ from their master offsets (a rank's share that does not start
// at 0, as on every rank but the first): the kept masters are the pieces' slices of the whole ones,
// and OwnedMasters maps a layout range to them (hand-worked: [100, 200) overlaps only [128, 192),
// kept from master offset 64). A one-rank optimizer cannot build such pieces, so this is checked on
// the model directly.
TEST(AdamWOptimizer, ShardedMastersKeepTheirLayoutSlices) {
  auto model = TrainModel::Load("tests/data/openmoe/tiny8b");
  ASSERT_TRUE(model.ok()) << model.status();
  model->set_compute_dtype(Dtype::kBf16);
  const std::vector<float> whole = Weights(*model);
  ASSERT_TRUE(model->ShardMasters({{0, 0, 64}, {128, 64, 64}}).ok());
  auto kept = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), model->flat_masters());
  ASSERT_EQ(kept.extent(0), 128u);
  for (int64_t i = 0; i < 64; ++i) {
    ASSERT_EQ(kept(i), whole[i]) << i;
    ASSERT_EQ(kept(64 + i), whole[128 + i]) << 128 + i;
  }
  const std::vector<TrainModel::MasterPiece> owned = model->OwnedMasters(100, 200);
  ASSERT_EQ(owned.size(), 1u);
  EXPECT_EQ(owned[0].layout, 128);
  EXPECT_EQ(owned[0].master, 64);
  EXPECT_EQ(owned[0].count, 64);
  const std::vector<TrainModel::MasterPiece> first = model->OwnedMasters(10, 140);
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].layout, 10);
  EXPECT_EQ(first[0].master, 10);
  EXPECT_EQ(first[0].count, 54);
  EXPECT_EQ(first[1].layout, 128);
  EXPECT_EQ(first[1].master, 64);
  EXPECT_EQ(first[1].count, 12);
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
