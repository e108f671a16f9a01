// Training-loss forward on the fixtures (train-mode routing): total, LM, router aux and router z
// against the float64 reference within 1e-4 relative (the fixtures README's bound for a
// float32 implementation), on every backend.
#include <cmath>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "openmoe/core/test_util.h"
#include "openmoe/losses.h"
#include "openmoe/model.h"
#include "tests/fixtures.h"

namespace openmoe {
namespace {

template <class Space>
class LossTest : public ::testing::Test {};
TYPED_TEST_SUITE(LossTest, testing::Backends);

TYPED_TEST(LossTest, MatchesTheFixtureLosses) {
  for (const std::string name : {"tiny8b", "tinybase"}) {
    const std::string dir = "tests/data/openmoe/" + name;
    const nlohmann::json expected = testing::FixtureJson(dir);
    absl::StatusOr<io::TokenBatch> batch = testing::FixtureBatch(dir);
    ASSERT_TRUE(batch.ok()) << batch.status();
    const int64_t B = batch->batch, S = batch->seq_len;
    const std::vector<int64_t>& ids = batch->ids;
    const std::vector<int64_t>& mask = batch->mask;
    auto model = OpenMoeModel<TypeParam>::Load(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    std::vector<MoeLayerStats> stats;
    auto logits = model->Logits(ids, mask, B, S, RoutingMode::kTrain, &stats);
    ASSERT_TRUE(logits.ok());
    std::vector<std::vector<float>> router_logits;
    for (const MoeLayerStats& s : stats) router_logits.push_back(s.router_logits);
    const LossParts parts = TrainingLoss(model->config(), *logits, ids, B, S, router_logits);
    const double want_total = expected["loss_total"], want_lm = expected["loss_parts"]["lm"];
    const double want_aux = expected["loss_parts"]["router_aux"], want_z = expected["loss_parts"]["router_z"];
    std::printf("%s on %s: total %.8f (want %.8f), lm %.8f (%.8f), aux %.8f (%.8f), z %.8f (%.8f)\n",
                name.c_str(), TypeParam::name(), parts.total, want_total, parts.lm, want_lm,
                parts.router_aux, want_aux, parts.router_z, want_z);
    EXPECT_NEAR(parts.total, want_total, 1e-4 * std::fabs(want_total));
    EXPECT_NEAR(parts.lm, want_lm, 1e-4 * std::fabs(want_lm));
    EXPECT_NEAR(parts.router_aux, want_aux, 1e-4 * std::fabs(want_aux));
    EXPECT_NEAR(parts.router_z, want_z, 1e-4 * std::fabs(want_z));
  }
}

TEST(Losses, PerfectSoftPredictionCostsOnlyTheZLoss) {
  // Logits equal to log(target) + c: CE minus the constant is 0, so the loss is z * logZ^2.
  const int64_t V = 5;
  const double ls = 0.1, off = ls / (V - 1), shift = 0.7;
  std::vector<float> logits(2 * V);
  for (int64_t v = 0; v < V; ++v) logits[v] = float(std::log(v == 3 ? 1 - ls : off) + shift);
  const std::vector<int64_t> ids = {0, 3};
  const double loss = LanguageModelLoss(logits, ids, 1, 2, V, ls, /*z_loss_factor=*/0.01);
  EXPECT_NEAR(loss, 0.01 * shift * shift, 1e-6);
}

TEST(Losses, BalancedRouterGivesAuxTwo) {
  // 4 tokens, 4 experts, each token's top-2 distinct and every expert equally used: aux = 2.
  std::vector<float> logits = {2, 1, 0, 0, /**/ 0, 2, 1, 0, /**/ 0, 0, 2, 1, /**/ 1, 0, 0, 2};
  double aux = 0, z = 0;
  RouterLosses(logits, 4, 4, aux, z);
  EXPECT_NEAR(aux, 2.0, 1e-12);
  const double lse = std::log(std::exp(2.0) + std::exp(1.0) + 2.0);
  EXPECT_NEAR(z, lse * lse, 1e-12);
}

}  // namespace
}  // namespace openmoe
