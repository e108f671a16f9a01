// MoE routing kernels on every backend against the double reference, and the edge cases of
// OpenMoE's capacity routing: exact ties, an expert with no tokens, capacity overflow (dropped
// tokens contribute exactly zero), and the capacity formula on the spec's own examples.
#include "kernels/moe.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <random>

#include "gtest/gtest.h"
#include "kernels/launch.h"
#include "kernels/reference/ops.h"
#include "openmoe/core/test_util.h"

namespace openmoe::kernels {
namespace {

using openmoe::testing::RandomNormal;
using openmoe::testing::ToDevice;
using openmoe::testing::ToHost;

TEST(ExpertCapacity, FollowsTheSpecExamples) {
  EXPECT_EQ(ExpertCapacity(2048, 32, 1.25, 4), 160);  // 8B training, 2048 tokens per rank
  EXPECT_EQ(ExpertCapacity(1, 32, 2.0, 4), 4);        // a decode step: the minimum
  EXPECT_EQ(ExpertCapacity(48, 8, 2.0, 4), 24);       // tiny8b fixture, eval
  EXPECT_EQ(ExpertCapacity(48, 8, 1.25, 4), 16);      // floor(15) = 15, rounded up to even
  EXPECT_EQ(ExpertCapacity(80, 16, 1.25, 4), 12);     // tinybase fixture, train: floor(12.5)
}

template <class Space>
class MoeTest : public ::testing::Test {
 protected:
  struct Routed {
    std::vector<float> probs;
    std::vector<int32_t> experts, rank;
  };
  Routed Route(const std::vector<float>& logits, int64_t T, int64_t E) {
    auto ld = ToDevice<Space>(logits, T, E, "logits");
    Matrix<float, Space> probs("probs", T, E);
    Matrix<int32_t, Space> experts("experts", T, 2), rank("rank", T, 2);
    EXPECT_TRUE(RouterTop2<float>(Space(), ld, probs, experts).ok());
    EXPECT_TRUE(AssignSlots<Space>(Space(), experts, E, rank).ok());
    return {ToHost(probs), ToHost(experts), ToHost(rank)};
  }
};
TYPED_TEST_SUITE(MoeTest, openmoe::testing::Backends);

TYPED_TEST(MoeTest, RoutingMatchesReference) {
  const int64_t T = 19, E = 5;
  const std::vector<float> logits = RandomNormal(T * E, 2.0f, 5);
  auto got = this->Route(logits, T, E);
  const reference::Top2Routing want = reference::RouteTop2(logits, T, E);
  EXPECT_EQ(got.experts, want.expert);
  EXPECT_EQ(got.rank, want.rank);
  for (int64_t i = 0; i < T * E; ++i) EXPECT_NEAR(got.probs[i], want.probs[i], 4 * FLT_EPSILON);
}

TYPED_TEST(MoeTest, ExactTiesGoToTheLowestIndex) {
  // Row 0: all equal (a zero hidden state) -> experts 0, 1. Row 1: maxima at 1 and 3 -> 1, 3.
  const std::vector<float> logits = {0, 0, 0, 0, /**/ 0.5f, 2, -1, 2};
  auto got = this->Route(logits, 2, 4);
  EXPECT_EQ(got.experts, (std::vector<int32_t>{0, 1, 1, 3}));
}

// AssignSlots over many tokens -- several chunks of each queue on every backend (CUDA: 2048
// tokens per chunk, host: 8 per team thread), a last chunk cut short -- against a plain loop over
// the queue definition: expert e's top-1 tokens in token order, then its top-2 tokens. Random
// distinct (top-1, top-2) pairs over experts [0, E - 1): expert E - 1 gets nothing.
template <class Space>
void CheckAssignSlots(int64_t N, int64_t E, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, int32_t(E) - 2);
  std::vector<int32_t> experts(2 * N);  // [N, 2]
  for (int64_t t = 0; t < N; ++t) {
    experts[2 * t] = pick(rng);
    do experts[2 * t + 1] = pick(rng);
    while (experts[2 * t + 1] == experts[2 * t]);
  }
  std::vector<int32_t> want(2 * N), next(E, 0);
  for (int k = 0; k < 2; ++k)
    for (int64_t t = 0; t < N; ++t) want[2 * t + k] = next[experts[2 * t + k]]++;
  Matrix<int32_t, Space> rank("rank", N, 2);
  ASSERT_TRUE(AssignSlots<Space>(Space(), ToDevice<Space>(experts, N, 2, "experts"), E, rank).ok());
  const std::vector<int32_t> got = ToHost(rank);
  for (int64_t i = 0; i < 2 * N; ++i)
    ASSERT_EQ(got[i], want[i]) << "token " << i / 2 << " choice " << i % 2 << " expert " << experts[i] << " (N " << N
                               << ", E " << E << ", seed " << seed << ")";
}

TYPED_TEST(MoeTest, AssignSlotsOfManyTokensMatchesAPlainLoop) {
  CheckAssignSlots<TypeParam>(/*N=*/3001, /*E=*/7, /*seed=*/31);
  CheckAssignSlots<TypeParam>(/*N=*/8192, /*E=*/32, /*seed=*/32);  // the 8B prefill's shape
}

// Full dispatch -> "experts" -> combine with expert e multiplying by (e + 1), against a direct
// evaluation of y[t] = sum over kept k of p[t, e_k] * (e_k + 1) * x[t].
template <class Space>
void CheckDispatchCombine(const std::vector<float>& logits, int64_t T, int64_t E, int64_t H, int64_t capacity,
                          const std::vector<float>& x, std::vector<float>* y_out = nullptr) {
  auto ld = ToDevice<Space>(logits, T, E, "logits");
  auto xd = ToDevice<Space>(x, T, H, "x");
  Matrix<float, Space> probs("probs", T, E), buffer("buffer", E * capacity, H), y("y", T, H);
  Matrix<int32_t, Space> experts("experts", T, 2), rank("rank", T, 2);
  ASSERT_TRUE(RouterTop2<float>(Space(), ld, probs, experts).ok());
  ASSERT_TRUE(AssignSlots<Space>(Space(), experts, E, rank).ok());
  ASSERT_TRUE(Dispatch<float>(Space(), xd, experts, rank, capacity, buffer).ok());
  auto buf = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), buffer);
  for (int64_t r = 0; r < E * capacity; ++r)
    for (int64_t h = 0; h < H; ++h) buf(r, h) *= float(r / capacity + 1);
  Kokkos::deep_copy(buffer, buf);
  ASSERT_TRUE(Combine<float>(Space(), buffer, probs, experts, rank, capacity, y).ok());
  const std::vector<float> got = ToHost(y);
  const reference::Top2Routing r = reference::RouteTop2(logits, T, E);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      double want = 0;
      for (int k = 0; k < 2; ++k)
        if (r.rank[t * 2 + k] < capacity) want += r.probs[t * E + r.expert[t * 2 + k]] * (r.expert[t * 2 + k] + 1) * x[t * H + h];
      ASSERT_NEAR(got[t * H + h], want, 8 * FLT_EPSILON * (std::fabs(want) + std::fabs(x[t * H + h]) * E)) << t << "," << h;
    }
  if (y_out) *y_out = got;
}

TYPED_TEST(MoeTest, DispatchCombineMatchesReference) {
  const int64_t T = 19, E = 5, H = 11;
  CheckDispatchCombine<TypeParam>(RandomNormal(T * E, 2.0f, 9), T, E, H, ExpertCapacity(T, E, 1.25, 4),
                                  RandomNormal(T * H, 1.0f, 10));
}

TYPED_TEST(MoeTest, CapacityOverflowDropsLaterTokensAndIdleExpertsStayEmpty) {
  // Every token prefers expert 0, then expert 1; experts 2 and 3 receive nothing. C = 12 for
  // T = 19, E = 4, cf 1.25: tokens 12..18 lose both assignments and must come out exactly 0.
  const int64_t T = 19, E = 4, H = 3, C = ExpertCapacity(T, E, 1.25, 4);
  ASSERT_EQ(C, 12);
  std::vector<float> logits(T * E);
  for (int64_t t = 0; t < T; ++t) logits[t * E] = 3.0f, logits[t * E + 1] = 2.0f, logits[t * E + 2] = -1.0f, logits[t * E + 3] = -2.0f;
  std::vector<float> y;
  CheckDispatchCombine<TypeParam>(logits, T, E, H, C, RandomNormal(T * H, 1.0f, 11), &y);
  for (int64_t t = C; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) EXPECT_EQ(y[t * H + h], 0.0f) << "token " << t;
  for (int64_t t = 0; t < C; ++t) EXPECT_NE(y[t * H], 0.0f) << "token " << t;
}

// The decode-step expert path (GroupedExpertProduct -> SwigluFromPartials -> GroupedExpert-
// Product -> CombineFromPartials) against a double evaluation of OpenMoE's expert MLP,
// y[t] = sum over kept k of p[t, e] * ((x W_gate[:, :I]) * silu(x W_gate[:, I:]) * (x W_up)) W_o,
// with token 2's top-1 assignment dropped (capacity 2, all three tokens prefer expert 0).
template <class Space>
void CheckGroupedExperts(int64_t T, int64_t E, int64_t C, const std::vector<float>& logits) {
  const int64_t H = 16, I = 8;
  const std::vector<float> x = RandomNormal(T * H, 1.0f, 21);
  const std::vector<float> wi_gate = RandomNormal(E * H * 2 * I, 0.5f, 22), wi_up = RandomNormal(E * H * I, 0.5f, 23);
  const std::vector<float> wo = RandomNormal(E * I * H, 0.5f, 24);
  auto ld = ToDevice<Space>(logits, T, E, "logits");
  auto xd = ToDevice<Space>(x, T, H, "x");
  auto gate_w = ToDevice<Space>(wi_gate, E * H, 2 * I, "wi_gate");
  auto up_w = ToDevice<Space>(wi_up, E * H, I, "wi_up");
  auto out_w = ToDevice<Space>(wo, E * I, H, "wo");
  Matrix<float, Space> probs("probs", T, E), act("act", 2 * T, I), y("y", T, H);
  Matrix<int32_t, Space> experts("experts", T, 2), rank("rank", T, 2);
  ASSERT_TRUE(RouterTop2<float>(Space(), ld, probs, experts).ok());
  ASSERT_TRUE(AssignSlots<Space>(Space(), experts, E, rank).ok());
  auto partials = [&](const char* name, int64_t inner, int64_t cols) {
    return Partials<Space>(std::string(name), GroupedExpertSplits(2 * T, inner, cols, Pack<float>::kSize), 2 * T, cols);
  };
  auto gate_p = partials("gate_p", H, 2 * I), up_p = partials("up_p", H, I), out_p = partials("out_p", I, H);
  ASSERT_TRUE(GroupedExpertShapesFit(gate_w.data(), 2 * I) && GroupedExpertShapesFit(up_w.data(), I) &&
              GroupedExpertShapesFit(out_w.data(), H));
  ASSERT_TRUE(GroupedExpertProduct<float>(Space(), xd, true, experts, rank, C, gate_w.data(), E, gate_p).ok());
  ASSERT_TRUE(GroupedExpertProduct<float>(Space(), xd, true, experts, rank, C, up_w.data(), E, up_p).ok());
  ASSERT_TRUE(SwigluFromPartials<float>(Space(), gate_p, up_p, act).ok());
  ASSERT_TRUE(GroupedExpertProduct<float>(Space(), ConstMatrix<float, Space>(act), false, experts, rank, C,
                                          out_w.data(), E, out_p).ok());
  ASSERT_TRUE(CombineFromPartials<float>(Space(), out_p, probs, experts, rank, C, y).ok());
  const std::vector<float> got = ToHost(y);

  const reference::Top2Routing r = reference::RouteTop2(logits, T, E);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> want(H, 0.0);
    for (int k = 0; k < 2; ++k) {
      const int64_t e = r.expert[t * 2 + k];
      if (r.rank[t * 2 + k] >= C) continue;
      std::vector<double> hidden(I);
      for (int64_t i = 0; i < I; ++i) {
        double lin = 0, gated = 0, up = 0;
        for (int64_t h = 0; h < H; ++h) {
          lin += double(x[t * H + h]) * wi_gate[(e * H + h) * 2 * I + i];
          gated += double(x[t * H + h]) * wi_gate[(e * H + h) * 2 * I + I + i];
          up += double(x[t * H + h]) * wi_up[(e * H + h) * I + i];
        }
        hidden[i] = lin * (gated / (1.0 + std::exp(-gated))) * up;
      }
      for (int64_t h = 0; h < H; ++h) {
        double o = 0;
        for (int64_t i = 0; i < I; ++i) o += hidden[i] * wo[(e * I + i) * H + h];
        want[h] += r.probs[t * E + e] * o;
      }
    }
    // Three chained float32 products of <= 16 terms of O(1) values: ~1e-5 relative error; 1e-4
    // of (1 + |want|) leaves margin without hiding a wrong expert, slice or dropped row (O(1)).
    for (int64_t h = 0; h < H; ++h) ASSERT_NEAR(got[t * H + h], want[h], 1e-4 * (1.0 + std::fabs(want[h]))) << t << "," << h;
  }
}

TYPED_TEST(MoeTest, GroupedExpertsMatchTheExpertMlpAndSkipDroppedAssignments) {
  const std::vector<float> logits = {3, 1, 0, -1, /**/ 3, 0, 1, -1, /**/ 3, -1, 0, 1};
  const reference::Top2Routing r = reference::RouteTop2(logits, 3, 4);
  ASSERT_EQ(r.expert[2 * 2], 0);
  ASSERT_GE(r.rank[2 * 2], 2);  // token 2's top-1 is dropped
  CheckGroupedExperts<TypeParam>(/*T=*/3, /*E=*/4, /*C=*/2, logits);
}

// A 13-token step over 3 experts: an expert holds more than 4 kept assignments, some are dropped
// at capacity 7 (seed 25).
TYPED_TEST(MoeTest, GroupedExpertsServeManyTokensPerExpert) {
  const int64_t T = 13, E = 3, C = 7;
  const std::vector<float> logits = RandomNormal(T * E, 1.0f, 25);
  const reference::Top2Routing r = reference::RouteTop2(logits, T, E);
  std::vector<int> kept(E, 0), dropped(E, 0);
  for (int64_t a = 0; a < 2 * T; ++a) ++(r.rank[a] < C ? kept : dropped)[r.expert[a]];
  ASSERT_GT(*std::max_element(kept.begin(), kept.end()), 4);
  ASSERT_GT(dropped[0] + dropped[1] + dropped[2], 0);
  CheckGroupedExperts<TypeParam>(T, E, C, logits);
}

}  // namespace
}  // namespace openmoe::kernels
