// bf16 run dtype against the float32 run of the same code on the shared fixtures (isolating
// precision error from semantic error, which parity_test covers).
//
// Bound, from an error model rather than from a measurement: every stored activation carries a
// relative rounding error of at most u = 2^-8 (bf16's unit roundoff; RMS u/sqrt(3)); a layer
// stores ~10 of them on the residual path (norm, q/k/v, attention, o_proj, gate/up/act, down,
// residual add), so with independent errors the logits' relative RMS error is at most about
// sqrt(10 L) u = 0.025 for L = 4, an NMSE of 6e-4 (2e-4 with the RMS rounding error). bf16 may
// also flip a routing decision (the fixtures' smallest router margin is 2.7e-3 in probability,
// within bf16 noise), which changes a token's MoE output outright; we allow for a few such tokens
// with a ~3x margin: NMSE <= 2e-3, and argmax agreement >= 90% of positions. A bf16 path that is wrong (e.g. a missed conversion or a dropped rounding of the
// wrong sign) gives NMSE ~ 1, far outside.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/core/test_util.h"
#include "openmoe/model.h"
#include "tests/fixtures.h"

namespace openmoe {
namespace {

constexpr double kMaxNmse = 2e-3;
constexpr double kMinArgmaxAgreement = 0.90;

template <class Space>
class Bf16ParityTest : public ::testing::Test {};
TYPED_TEST_SUITE(Bf16ParityTest, testing::Backends);

TYPED_TEST(Bf16ParityTest, StaysWithinTheBf16ErrorModelOfFloat32) {
  for (const std::string case_name : {"tiny8b", "tinybase"}) {
    const std::string dir = "tests/data/openmoe/" + case_name;
    absl::StatusOr<io::TokenBatch> batch = testing::FixtureBatch(dir);
    ASSERT_TRUE(batch.ok()) << batch.status();
    const int64_t B = batch->batch, S = batch->seq_len;
    const std::vector<int64_t>& ids = batch->ids;
    const std::vector<int64_t>& mask = batch->mask;
    auto fp32 = OpenMoeModel<TypeParam, float>::Load(dir);
    auto bf = OpenMoeModel<TypeParam, bf16>::Load(dir);
    ASSERT_TRUE(fp32.ok() && bf.ok()) << fp32.status() << bf.status();
    for (RoutingMode mode : {RoutingMode::kEval, RoutingMode::kTrain}) {
      absl::StatusOr<std::vector<float>> a = fp32->Logits(ids, mask, B, S, mode);
      absl::StatusOr<std::vector<float>> b = bf->Logits(ids, mask, B, S, mode);
      ASSERT_TRUE(a.ok() && b.ok());
      const int64_t V = fp32->config().vocab_size;
      double err = 0, ref = 0;
      int64_t agree = 0;
      for (int64_t row = 0; row < B * S; ++row) {
        int64_t best_a = 0, best_b = 0;
        for (int64_t v = 0; v < V; ++v) {
          const double x = (*a)[row * V + v], y = (*b)[row * V + v];
          err += (x - y) * (x - y), ref += x * x;
          if (x > (*a)[row * V + best_a]) best_a = v;
          if (y > (*b)[row * V + best_b]) best_b = v;
        }
        agree += best_a == best_b;
      }
      const double nmse = err / ref, agreement = double(agree) / double(B * S);
      std::printf("%s %s %s: bf16 vs fp32 NMSE %.3g, argmax agreement %.3f\n", case_name.c_str(),
                  mode == RoutingMode::kEval ? "eval" : "train", TypeParam::name(), nmse, agreement);
      EXPECT_LE(nmse, kMaxNmse);
      EXPECT_GE(agreement, kMinArgmaxAgreement);
      EXPECT_GT(nmse, 0.0) << "bf16 run identical to fp32: is it really running in bf16?";
    }
  }
}

}  // namespace
}  // namespace openmoe
