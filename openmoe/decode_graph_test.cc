// Decode graphs with programmatic dependent launch: a chain of kernels, each reading what the
// one before wrote at another index (so another block), run direct, captured and replayed. On
// CUDA every kernel -> kernel edge of the captured chain must become programmatic and every
// replay must still see each kernel's predecessor complete. CUDA only (tag gpu): backends without
// decode graphs skip, since there the chain would only run directly.
#include "openmoe/decode_graph.h"

#include <cstdint>

#include "gtest/gtest.h"
#include "kernels/dependent_launch.h"
#include "kernels/linear.h"
#include "kernels/moe.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/test_util.h"

namespace openmoe {
namespace {

template <class Space>
class DecodeGraphTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!DecodeGraphs<Space>::kSupported) GTEST_SKIP() << "no decode graphs on " << Space::name();
  }
};
TYPED_TEST_SUITE(DecodeGraphTest, openmoe::testing::Backends);

constexpr int64_t kN = int64_t(1) << 20;  // elements: 4096 blocks of 256 threads on CUDA
constexpr int kKernels = 64;               // per step, even: the step ends in `a`

// One step: kKernels times next[i] = prev[(i + 1) % n] + one[i], alternating the two launch
// forms (the second reads `one`, which nothing writes, before it waits).
template <class Space>
void EnqueueStep(const Space& space, Kokkos::View<int64_t*, Space> a, Kokkos::View<int64_t*, Space> b,
                 Kokkos::View<const int64_t*, Space> one) {
  using Range = Kokkos::RangePolicy<Space, Kokkos::IndexType<int64_t>>;
  for (int k = 0; k < kKernels; ++k) {
    auto prev = k % 2 == 0 ? a : b, next = k % 2 == 0 ? b : a;
    if (k % 4 < 2) {
      kernels::DependentParallelFor("decode_graph_test::shift", Range(space, 0, kN), KOKKOS_LAMBDA(const int64_t i) {
        next(i) = prev((i + 1) % kN) + one(i);
      });
    } else {
      kernels::DependentParallelForWaitsInside("decode_graph_test::shift_waits_inside", Range(space, 0, kN),
                                               KOKKOS_LAMBDA(const int64_t i) {
                                                 const int64_t add = one(i);
                                                 kernels::WaitForPrecedingKernels();
                                                 next(i) = prev((i + 1) % kN) + add;
                                               });
    }
  }
}

template <class Space>
void RunSteps(DependentLaunch mode) {
  const bool dependent_launch = mode != DependentLaunch::kOff;
  DecodeGraphs<Space> graphs;
  graphs.set_dependent_launch(mode);
  const Space space = graphs.space();
  Kokkos::View<int64_t*, Space> a("a", kN), b("b", kN), one("one", kN);
  Kokkos::deep_copy(one, 1);
  Kokkos::parallel_for(Kokkos::RangePolicy<Space, Kokkos::IndexType<int64_t>>(space, 0, kN),
                       KOKKOS_LAMBDA(const int64_t i) { a(i) = i; });
  space.fence();
  const DecodeGraphKey key{/*cache=*/1, /*batch=*/1, /*capacity=*/1, /*generation=*/0};
  for (int step = 1; step <= 4; ++step) {  // direct, captured, replayed twice
    ASSERT_TRUE(graphs.Run(key, [] { return uint64_t(0); }, [&] {
      EnqueueStep<Space>(space, a, b, one);
      return absl::OkStatus();
    }).ok());
    space.fence();
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), a);
    const int64_t shift = int64_t(step) * kKernels;
    for (int64_t i = 0; i < kN; ++i) {
      ASSERT_EQ(host(i), (i + shift) % kN + shift) << "element " << i << " after step " << step
                                                   << (dependent_launch ? " with" : " without") << " dependent launch";
    }
  }
  EXPECT_EQ(graphs.launches(), 3) << "steps 2-4 run as graph launches";
  if (DecodeGraphs<Space>::kSupported) {
    EXPECT_EQ(graphs.edges(), kKernels - 1) << "the captured step is a chain of its kernels";
    EXPECT_EQ(graphs.programmatic_edges(), dependent_launch ? kKernels - 1 : 0);
  }
}

// cuBLAS kernels in the chain (a bf16 Linear of 8192 or more columns goes to cuBLAS on CUDA):
// per round y = x . w^T with w all ones (y[n] = K x), then a dependent kernel acc += y and x += 1,
// so that a kernel reading y or x before its predecessor finished would see the previous round's
// values. The values stay exact: x <= 33, K x <= 2^16 in bf16, acc <= K * 528 in float32.
template <class Space>
void RunStepsThroughCublas(DependentLaunch mode, int64_t K = 16, int64_t N = 8192) {
  constexpr int64_t kRounds = 8;
  DecodeGraphs<Space> graphs;
  graphs.set_dependent_launch(mode);
  const Space space = graphs.space();
  const kernels::ExecutionContext<Space> ctx(space);  // its cuBLAS handle is created by the first (direct) step
  Matrix<bf16, Space> x("x", 1, K), w("w", N, K), y("y", 1, N);
  Kokkos::View<float*, Space> acc("acc", N);
  Kokkos::deep_copy(x, bf16(1.0f));
  Kokkos::deep_copy(w, bf16(1.0f));
  space.fence();
  const DecodeGraphKey key{/*cache=*/2, /*batch=*/1, /*capacity=*/1, /*generation=*/0};
  for (int step = 1; step <= 4; ++step) {  // direct, captured, replayed twice
    ASSERT_TRUE(graphs.Run(key, [] { return uint64_t(0); }, [&]() -> absl::Status {
      for (int r = 0; r < kRounds; ++r) {
        absl::Status s = kernels::Linear<bf16>(ctx, ConstMatrix<bf16, Space>(x), ConstMatrix<bf16, Space>(w), y);
        if (!s.ok()) return s;
        kernels::DependentParallelFor("decode_graph_test::accumulate", Kokkos::RangePolicy<Space, Kokkos::IndexType<int64_t>>(space, 0, N),
                                      KOKKOS_LAMBDA(const int64_t n) {
                                        acc(n) += ToFloat(y(0, n));
                                        if (n < K) x(0, n) = FromFloat<bf16>(ToFloat(x(0, n)) + 1.0f);
                                      });
      }
      return absl::OkStatus();
    }).ok());
    space.fence();
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), acc);
    const int64_t rounds = step * kRounds;  // x was 1, 2, ..., rounds: acc = K (1 + ... + rounds)
    const float want = float(K * rounds * (rounds + 1) / 2);
    for (int64_t n = 0; n < N; ++n) ASSERT_EQ(host(n), want) << "column " << n << " after step " << step;
  }
  EXPECT_GT(graphs.launches(), 0) << "the steps after the first run as graph launches";
  if (DecodeGraphs<Space>::kSupported && mode == DependentLaunch::kBetweenOwnKernels) {
    EXPECT_EQ(graphs.programmatic_edges(), 0) << "every own kernel follows a cuBLAS kernel";
  }
  if (DecodeGraphs<Space>::kSupported && mode == DependentLaunch::kAll) {
    EXPECT_GT(graphs.programmatic_edges(), 0) << "edges cuBLAS -> own kernel of " << graphs.edges() << " (K " << K
                                              << ", N " << N << ")";
  }
}

// OpenMoE-8B's widest decode products (gate/up: 24576 x 2048; the LM head: 256384 x 2048, 1 GB of
// weights), whose cuBLAS kernels use a workspace: capture must still give programmatic edges
// (before cuBLAS had its own workspace it allocated one during capture, and the driver refused
// to change the edges of a graph holding that allocation). CUDA only: on the host these are
// minutes of scalar products.
TYPED_TEST(DecodeGraphTest, CublasKernelsAtOpenMoe8bShapesKeepProgrammaticEdges) {
  RunStepsThroughCublas<TypeParam>(DependentLaunch::kAll, /*K=*/2048, /*N=*/24576);
  RunStepsThroughCublas<TypeParam>(DependentLaunch::kAll, /*K=*/2048, /*N=*/256384);
}

TYPED_TEST(DecodeGraphTest, CublasKernelsInTheChainWithDependentLaunch) {
  RunStepsThroughCublas<TypeParam>(DependentLaunch::kAll);
}

TYPED_TEST(DecodeGraphTest, CublasKernelsInTheChainWithDependentLaunchBetweenOwnKernels) {
  RunStepsThroughCublas<TypeParam>(DependentLaunch::kBetweenOwnKernels);
}

TYPED_TEST(DecodeGraphTest, ChainedKernelsSeeTheirPredecessorsWithDependentLaunch) {
  RunSteps<TypeParam>(DependentLaunch::kAll);
}

TYPED_TEST(DecodeGraphTest, ChainedKernelsSeeTheirPredecessorsWithDependentLaunchBetweenOwnKernels) {
  RunSteps<TypeParam>(DependentLaunch::kBetweenOwnKernels);
}

TYPED_TEST(DecodeGraphTest, ChainedKernelsSeeTheirPredecessorsWithoutDependentLaunch) {
  RunSteps<TypeParam>(DependentLaunch::kOff);
}

#if defined(KOKKOS_ENABLE_CUDA)
// Conditional branches (the experts of a batched decode step): a step of 3 tokens routed to 2 of
// 8 experts each, queue capacity 2. Branch e adds 1 to runs(e) when expert e holds a kept
// assignment (rank < 2), and a kernel after the branches copies the sum of runs, so it must see
// every branch taken before it. The routing changes between replays (written before each Run, as
// the model's routing kernels would); the first, uncaptured step picks the experts on the host.
void RunConditionalBranchSteps() {
  using Space = Kokkos::Cuda;
  constexpr int64_t kE = 8, kT = 3, kCapacity = 2;
  DecodeGraphs<Space> graphs;  // dependent launch: the default, kAll
  const Space space = graphs.space();
  Matrix<int32_t, Space> experts("experts", kT, 2), rank("rank", kT, 2);
  Kokkos::View<int64_t*, Space> runs("runs", kE), sum_after("sum_after", 1);
  struct Routing {
    int32_t experts[kT][2], rank[kT][2];
  };
  const Routing steps[] = {
      {{{0, 1}, {2, 3}, {0, 5}}, {{0, 0}, {0, 0}, {1, 0}}},  // in use: 0 1 2 3 5
      {{{4, 1}, {4, 1}, {4, 7}}, {{0, 0}, {1, 1}, {2, 2}}},  // 4 and 1 (third token dropped twice)
      {{{6, 2}, {6, 2}, {6, 2}}, {{2, 3}, {4, 5}, {6, 7}}},  // none: every assignment dropped
      {{{0, 1}, {2, 3}, {0, 5}}, {{0, 0}, {0, 0}, {1, 0}}},  // as the first, replayed
  };
  std::vector<int64_t> want(kE, 0);
  const DecodeGraphKey key{/*cache=*/3, /*batch=*/kT, /*capacity=*/1, /*generation=*/0};
  for (int step = 0; step < 4; ++step) {
    auto experts_host = Kokkos::create_mirror_view(experts);
    auto rank_host    = Kokkos::create_mirror_view(rank);
    std::vector<bool> in_use(kE, false);
    for (int64_t t = 0; t < kT; ++t)
      for (int k = 0; k < 2; ++k) {
        experts_host(t, k) = steps[step].experts[t][k], rank_host(t, k) = steps[step].rank[t][k];
        if (rank_host(t, k) < kCapacity) in_use[experts_host(t, k)] = true;
      }
    for (int64_t e = 0; e < kE; ++e) want[e] += in_use[e];
    Kokkos::deep_copy(experts, experts_host);
    Kokkos::deep_copy(rank, rank_host);
    auto branch = [&](int64_t e, const Space& on) {
      Kokkos::parallel_for("decode_graph_test::branch", Kokkos::RangePolicy<Space>(on, 0, 1),
                           KOKKOS_LAMBDA(int) { runs(e) += 1; });
      return absl::OkStatus();
    };
    const absl::Status status = graphs.Run(key, [] { return uint64_t(0); }, [&]() -> absl::Status {
      if (graphs.capturing()) {
        auto conditions = graphs.NewConditions(kE);
        if (!conditions.ok()) return conditions.status();
        absl::Status s = kernels::SetExpertConditions(space, experts, rank, kCapacity, *conditions);
        if (s.ok()) s = graphs.EnqueueConditionalBranches(*conditions, branch);
        if (!s.ok()) return s;
      } else {
        for (int64_t e = 0; e < kE; ++e)
          if (in_use[e]) (void)branch(e, space);
      }
      Kokkos::parallel_for("decode_graph_test::sum", Kokkos::RangePolicy<Space>(space, 0, 1), KOKKOS_LAMBDA(int) {
        int64_t total = 0;
        for (int64_t e = 0; e < kE; ++e) total += runs(e);
        sum_after(0) = total;
      });
      return absl::OkStatus();
    });
    ASSERT_TRUE(status.ok()) << status;
    space.fence();
    auto runs_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), runs);
    auto sum_host  = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), sum_after);
    int64_t total = 0;
    for (int64_t e = 0; e < kE; ++e) {
      EXPECT_EQ(runs_host(e), want[e]) << "expert " << e << " after step " << step;
      total += want[e];
    }
    EXPECT_EQ(sum_host(0), total) << "the kernel after the branches ran before some of them (step " << step << ")";
  }
  EXPECT_EQ(graphs.conditional_branches(), kE);
  EXPECT_EQ(graphs.launches(), 3) << "steps 2-4 run as graph launches";
}

TEST(DecodeGraphConditionalBranches, OnlyExpertsInUseRunAndWhatFollowsWaitsForThem) { RunConditionalBranchSteps(); }
#endif

}  // namespace
}  // namespace openmoe
