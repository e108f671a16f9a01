// Graphed bf16 decode (CUDA graphs, experts in conditional branches) against direct decode on
// the fixtures. CUDA only (tag gpu): host backends have no decode graphs and skip.
#include <algorithm>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/core/test_util.h"
#include "openmoe/runtime/generation.h"
#include "tests/generation_prompt.h"

namespace openmoe {
namespace {

using testing::LoadPrompt;
using testing::Prompt;

template <class Space>
class DecodeGraphGenerationTest : public ::testing::Test {};
TYPED_TEST_SUITE(DecodeGraphGenerationTest, testing::Backends);

// bf16 decode steps run as a captured and replayed CUDA graph on CUDA (first step with a cache
// uncaptured, second captured, later ones replayed): the logits of every step must be
// bit-identical to running the same kernels one by one, across three caches (the graph is
// re-captured for each). Batch 2 takes the grouped-expert path; batches 6 and 16 (the fixture's
// prompts with shifted ids) the dispatch path, whose experts run in conditional branches of the
// graph, taken only by the experts in use. The graph counters must show that graphs were launched
// (OPENMOE_CUDA_GRAPHS=0 or a model that never graphs fails here) and, from batch 6, that the
// captured graph holds the expert branches. Backends without decode graphs skip.
template <class Space>
void ExpectDecodeGraphsGiveIdenticalLogits(int64_t batch) {
  if (!OpenMoeModel<Space, bf16>::kDecodeGraphsSupported) GTEST_SKIP() << "no decode graphs on " << Space::name();
  const std::string dir = "tests/data/openmoe/tiny8b";
  const Prompt fixture = LoadPrompt(dir);
  auto graphed = OpenMoeModel<Space, bf16>::Load(dir);
  auto direct = OpenMoeModel<Space, bf16>::Load(dir);
  ASSERT_TRUE(graphed.ok() && direct.ok());
  direct->set_decode_graphs(false);
  const int64_t V = graphed->config().vocab_size, len = fixture.len;
  Prompt p = fixture;
  p.batch = batch, p.ids.resize(batch * len), p.mask.resize(batch * len);
  for (int64_t b = fixture.batch; b < batch; ++b) {
    const int64_t from = b % fixture.batch, shift = 7 * (b / fixture.batch);
    for (int64_t j = 0; j < len; ++j) {
      const int64_t id = fixture.ids[from * len + j];
      p.mask[b * len + j] = fixture.mask[from * len + j];
      p.ids[b * len + j]  = id < 3 ? id : 3 + (id - 3 + shift) % (V - 3);  // special ids kept
    }
  }
  // Cache capacities above 64 columns take the split-key attention, whose scratch grows with the
  // capacity: the third round returns to the first one's shapes after that growth.
  int round = 0;
  for (const int64_t extra : {100, 300, 100}) {
    const int64_t launches_before = graphed->decode_graph_launches();
    auto cache_g = graphed->NewCache(p.batch, p.len + extra);
    auto cache_d = direct->NewCache(p.batch, p.len + extra);
    ASSERT_TRUE(cache_g.ok() && cache_d.ok());
    auto logits_g = graphed->Step(*cache_g, p.ids, p.mask, p.len, RoutingMode::kEval, true);
    auto logits_d = direct->Step(*cache_d, p.ids, p.mask, p.len, RoutingMode::kEval, true);
    for (int step = 0; step < 8; ++step) {
      ASSERT_TRUE(logits_g.ok() && logits_d.ok()) << logits_g.status() << logits_d.status();
      ASSERT_EQ(*logits_g, *logits_d) << "batch " << batch << " round " << round << " step " << step << " on "
                                      << Space::name();
      std::vector<int64_t> next(p.batch);
      for (int64_t b = 0; b < p.batch; ++b) {
        next[b] = std::max_element(logits_d->begin() + b * V, logits_d->begin() + (b + 1) * V) - (logits_d->begin() + b * V);
      }
      const std::vector<int64_t> ones(p.batch, 1);
      logits_g = graphed->Step(*cache_g, next, ones, 1, RoutingMode::kEval, true);
      logits_d = direct->Step(*cache_d, next, ones, 1, RoutingMode::kEval, true);
    }
    // 8 decode steps on a new cache: the first runs directly (allocating), the second is captured
    // and launched, the rest replay: 7 launches, 6 allowing one more warm-up step.
    EXPECT_GE(graphed->decode_graph_launches() - launches_before, 6) << "batch " << batch << " round " << round;
    const int64_t branches = graphed->decode_graph_conditional_branches();
    if (batch == 2) {
      EXPECT_EQ(branches, 0) << "batch 2 takes the grouped-expert path, without branches";
    } else {
      const int64_t E = graphed->config().num_experts;
      EXPECT_GT(branches, 0) << "batch " << batch << ": no expert branches in the captured graph";
      EXPECT_EQ(branches % E, 0) << "one branch per expert and MoE layer";
    }
    ++round;
  }
  EXPECT_EQ(direct->decode_graph_launches(), 0);
}

TYPED_TEST(DecodeGraphGenerationTest, Bf16DecodeGraphsGiveIdenticalLogits) { ExpectDecodeGraphsGiveIdenticalLogits<TypeParam>(2); }
TYPED_TEST(DecodeGraphGenerationTest, Bf16DecodeGraphsWithExpertBranchesGiveIdenticalLogitsAtBatch6) {
  ExpectDecodeGraphsGiveIdenticalLogits<TypeParam>(6);
}
TYPED_TEST(DecodeGraphGenerationTest, Bf16DecodeGraphsWithExpertBranchesGiveIdenticalLogitsAtBatch16) {
  ExpectDecodeGraphsGiveIdenticalLogits<TypeParam>(16);
}

// A captured decode graph replays the kernels chosen under the tuning it was captured with, so a
// change of the decode tuning between steps of one cache must capture a new graph. Here decode
// steps 1-4 capture and replay a graph of the whole step; steps 5-7 leave the attention kernels
// out (kernels::Tuning::decode_leave_out, the benchmarks' ablation) and steps 8-10 run the whole
// step again. Every step's logits must be those of the same tuning run kernel by kernel (a
// replayed stale graph gives the whole step's logits in steps 5-7, and the test checks that
// those differ).
TYPED_TEST(DecodeGraphGenerationTest, ChangingTheDecodeTuningCapturesANewGraph) {
  using Space = TypeParam;
  if (!OpenMoeModel<Space, bf16>::kDecodeGraphsSupported) GTEST_SKIP() << "no decode graphs on " << Space::name();
  const std::string dir = "tests/data/openmoe/tiny8b";
  const Prompt p = LoadPrompt(dir);
  auto graphed = OpenMoeModel<Space, bf16>::Load(dir);
  auto direct = OpenMoeModel<Space, bf16>::Load(dir);
  ASSERT_TRUE(graphed.ok() && direct.ok());
  direct->set_decode_graphs(false);
  auto cache_g = graphed->NewCache(p.batch, p.len + 16);
  auto cache_d = direct->NewCache(p.batch, p.len + 16);
  ASSERT_TRUE(cache_g.ok() && cache_d.ok());
  auto logits_g = graphed->Step(*cache_g, p.ids, p.mask, p.len, RoutingMode::kEval, true);
  auto logits_d = direct->Step(*cache_d, p.ids, p.mask, p.len, RoutingMode::kEval, true);
  ASSERT_TRUE(logits_g.ok() && logits_d.ok());
  const std::vector<int64_t> next(p.batch, 11), ones(p.batch, 1);
  std::vector<float> whole_step_logits;  // step 5 with the whole step (a third model)
  {
    auto whole = OpenMoeModel<Space, bf16>::Load(dir);
    ASSERT_TRUE(whole.ok());
    whole->set_decode_graphs(false);
    auto cache = whole->NewCache(p.batch, p.len + 16);
    ASSERT_TRUE(cache.ok());
    ASSERT_TRUE(whole->Step(*cache, p.ids, p.mask, p.len, RoutingMode::kEval, true).ok());
    for (int step = 1; step <= 5; ++step) {
      auto logits = whole->Step(*cache, next, ones, 1, RoutingMode::kEval, true);
      ASSERT_TRUE(logits.ok());
      whole_step_logits = *logits;
    }
  }
  const int64_t launches_before = graphed->decode_graph_launches();
  for (int step = 1; step <= 10; ++step) {
    const uint32_t leave_out = step >= 5 && step <= 7 ? kernels::kLeaveOutAttentionCore : 0u;
    graphed->context().tuning().decode_leave_out = leave_out;
    direct->context().tuning().decode_leave_out = leave_out;
    logits_g = graphed->Step(*cache_g, next, ones, 1, RoutingMode::kEval, true);
    logits_d = direct->Step(*cache_d, next, ones, 1, RoutingMode::kEval, true);
    ASSERT_TRUE(logits_g.ok() && logits_d.ok()) << logits_g.status() << logits_d.status();
    ASSERT_EQ(*logits_g, *logits_d) << "step " << step << " on " << Space::name();
    if (step == 5) ASSERT_NE(*logits_d, whole_step_logits) << "leaving attention out changes nothing: this test cannot tell";
  }
  EXPECT_GE(graphed->decode_graph_launches() - launches_before, 5) << "the steps were not replayed as graphs";
}

}  // namespace
}  // namespace openmoe
