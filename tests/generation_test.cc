// Greedy KV-cache generation against the fixtures' gen_greedy_ids (the prompt is one routing
// group, every decode step another), and KV-cache decoding against full recomputation when no
// token is dropped, on every backend.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/core/test_util.h"
#include "openmoe/generation.h"
#include "openmoe/io/safetensors.h"

namespace openmoe {
namespace {

struct Prompt {
  std::vector<int64_t> ids, mask, greedy;
  int64_t batch = 0, len = 0, steps = 0;
};

Prompt LoadPrompt(const std::string& dir) {
  Prompt p;
  auto file = io::SafetensorsFile::Open(dir + "/expected.safetensors");
  EXPECT_TRUE(file.ok());
  p.batch = file->Find("gen_prompt_ids")->shape[0], p.len = file->Find("gen_prompt_ids")->shape[1];
  p.steps = file->Find("gen_greedy_ids")->shape[1];
  p.ids.resize(p.batch * p.len), p.mask.resize(p.batch * p.len), p.greedy.resize(p.batch * p.steps);
  EXPECT_TRUE(file->ReadAsInt64("gen_prompt_ids", p.ids.data(), p.ids.size()).ok());
  EXPECT_TRUE(file->ReadAsInt64("gen_prompt_mask", p.mask.data(), p.mask.size()).ok());
  EXPECT_TRUE(file->ReadAsInt64("gen_greedy_ids", p.greedy.data(), p.greedy.size()).ok());
  return p;
}

template <class Space>
class GenerationTest : public ::testing::Test {};
TYPED_TEST_SUITE(GenerationTest, testing::Backends);

TYPED_TEST(GenerationTest, GreedyMatchesTheFixtures) {
  for (const std::string name : {"tiny8b", "tinybase"}) {
    const std::string dir = "tests/data/openmoe/" + name;
    const Prompt p = LoadPrompt(dir);
    auto model = OpenMoeModel<TypeParam>::Load(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    GenerationOptions options;
    options.max_new_tokens = p.steps;
    absl::StatusOr<GenerationResult> r = Generate(*model, p.ids, p.mask, p.batch, p.len, options);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->steps, p.steps);
    EXPECT_EQ(r->ids, p.greedy) << name << " on " << TypeParam::name();
  }
}

TYPED_TEST(GenerationTest, KvCacheDecodingEqualsRecomputationWithoutDrops) {
  const std::string dir = "tests/data/openmoe/tiny8b";
  absl::StatusOr<OpenMoeConfig> config = LoadConfig(dir + "/config.json");
  ASSERT_TRUE(config.ok());
  // Capacity >= every group's assignments: floor(2 * cf * N / E) >= N needs cf >= E / 2.
  config->router_capacity_factor_eval = float(config->num_experts);
  auto reader = CheckpointReader::Open(dir);
  auto model = OpenMoeModel<TypeParam>::FromCheckpoint(*config, *reader);
  ASSERT_TRUE(model.ok());
  const Prompt p = LoadPrompt(dir);
  const int64_t steps = 6, V = config->vocab_size;
  auto cache = model->NewCache(p.batch, p.len + steps);
  ASSERT_TRUE(cache.ok());
  std::vector<int64_t> ids = p.ids, mask = p.mask;  // growing [B, len] for the recomputation
  int64_t len = p.len;
  auto step_logits = model->Step(*cache, p.ids, p.mask, p.len, RoutingMode::kEval, /*last_only=*/true);
  for (int64_t s = 0; s < steps; ++s) {
    ASSERT_TRUE(step_logits.ok()) << step_logits.status();
    auto full = model->Logits(ids, mask, p.batch, len, RoutingMode::kEval);
    ASSERT_TRUE(full.ok());
    double max_diff = 0;
    std::vector<int64_t> next(p.batch);
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t v = 0; v < V; ++v)
        max_diff = std::max(max_diff, std::fabs(double((*step_logits)[b * V + v]) - (*full)[(b * len + len - 1) * V + v]));
      next[b] = std::max_element(step_logits->begin() + b * V, step_logits->begin() + (b + 1) * V) - (step_logits->begin() + b * V);
    }
    // Same maths in another order (different GEMM shapes): float32 rounding only.
    EXPECT_LE(max_diff, 1e-4) << "step " << s;
    std::vector<int64_t> new_ids, new_mask;
    for (int64_t b = 0; b < p.batch; ++b) {
      new_ids.insert(new_ids.end(), ids.begin() + b * len, ids.begin() + (b + 1) * len);
      new_ids.push_back(next[b]);
      new_mask.insert(new_mask.end(), mask.begin() + b * len, mask.begin() + (b + 1) * len);
      new_mask.push_back(1);
    }
    ids = new_ids, mask = new_mask, ++len;
    step_logits = model->Step(*cache, next, std::vector<int64_t>(p.batch, 1), 1, RoutingMode::kEval, true);
  }
}

// bf16 decode steps run as a captured and replayed CUDA graph on CUDA (first step with a cache
// uncaptured, second captured, later ones replayed): the logits of every step must be
// bit-identical to running the same kernels one by one, across three caches (the graph is
// re-captured for each). Batch 2 takes the grouped-expert path; batches 6 and 16 (the fixture's
// prompts with shifted ids) the dispatch path, whose experts run in conditional branches of the
// graph, taken only by the experts in use. On host backends both runs take the direct path.
template <class Space>
void ExpectDecodeGraphsGiveIdenticalLogits(int64_t batch) {
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
  for (const int64_t extra : {100, 300, 100}) {
    const int round = extra == 300 ? 1 : 0;
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
  }
}

TYPED_TEST(GenerationTest, Bf16DecodeGraphsGiveIdenticalLogits) { ExpectDecodeGraphsGiveIdenticalLogits<TypeParam>(2); }
TYPED_TEST(GenerationTest, Bf16DecodeGraphsWithExpertBranchesGiveIdenticalLogitsAtBatch6) {
  ExpectDecodeGraphsGiveIdenticalLogits<TypeParam>(6);
}
TYPED_TEST(GenerationTest, Bf16DecodeGraphsWithExpertBranchesGiveIdenticalLogitsAtBatch16) {
  ExpectDecodeGraphsGiveIdenticalLogits<TypeParam>(16);
}

TYPED_TEST(GenerationTest, RejectsPromptsThatDoNotFitTheContext) {
  auto model = OpenMoeModel<TypeParam>::Load("tests/data/openmoe/tiny8b");
  ASSERT_TRUE(model.ok());
  GenerationOptions options;
  options.max_new_tokens = 100;
  std::vector<int64_t> ids(2000, 5), mask(2000, 1);
  auto r = Generate(*model, ids, mask, 1, 2000, options);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("exceeds the model's context of 2048"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace openmoe
