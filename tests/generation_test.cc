// Greedy KV-cache generation against the fixtures' gen_greedy_ids (the prompt is one routing
// group, every decode step another), and KV-cache decoding against full recomputation when no
// token is dropped, on every backend.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/core/test_util.h"
#include "openmoe/checkpoint.h"
#include "openmoe/runtime/generation.h"
#include "openmoe/io/safetensors.h"
#include "tests/generation_prompt.h"

namespace openmoe {
namespace {

using testing::LoadPrompt;
using testing::Prompt;

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

// Greedy decoding written out step by step (the expectation for Generate's loop): the prompt is
// one Step, then every step feeds each row its last token, or <pad> once the row produced `eos`
// or `done(row, its tokens)` holds; stops when every row is finished or after `max_steps`.
// Returns [B, steps] row-major.
using RowDone = std::function<bool(int64_t, const std::vector<int64_t>&)>;
template <class Model>
std::vector<int64_t> StepByStepGreedy(Model& model, const Prompt& p, int64_t eos, int64_t max_steps, int64_t* steps,
                                      const RowDone& done = nullptr, bool feed_last_when_done = false) {
  const int64_t V = model.config().vocab_size, B = p.batch, pad = model.config().pad_token_id;
  auto cache = model.NewCache(B, p.len + max_steps);
  EXPECT_TRUE(cache.ok());
  auto logits = model.Step(*cache, p.ids, p.mask, p.len, RoutingMode::kEval, /*last_only=*/true);
  std::vector<std::vector<int64_t>> rows(B);
  std::vector<bool> finished(B, false);
  std::vector<int64_t> fed(B);
  int64_t s = 0;
  while (s < max_steps) {
    EXPECT_TRUE(logits.ok()) << logits.status();
    if (!logits.ok()) break;
    for (int64_t b = 0; b < B; ++b) {
      const auto row = logits->begin() + b * V;
      const int64_t last = fed[b];
      fed[b] = finished[b] ? (feed_last_when_done ? last : pad) : std::max_element(row, row + V) - row;
      rows[b].push_back(finished[b] ? pad : fed[b]);
      if (!finished[b] && (fed[b] == eos || (done && done(b, rows[b])))) finished[b] = true;
    }
    ++s;
    if (std::all_of(finished.begin(), finished.end(), [](bool f) { return f; }) || s == max_steps) break;
    logits = model.Step(*cache, fed, std::vector<int64_t>(B, 1), 1, RoutingMode::kEval, true);
  }
  std::vector<int64_t> out;
  for (const auto& r : rows) out.insert(out.end(), r.begin(), r.end());
  *steps = s;
  return out;
}

// Stopping at EOS: a row that produced EOS emits <pad> from then on (as HF generate does), the
// others go on; Generate returns once every row is finished. EOS is set to a token the model
// produces. (What a finished row is fed is checked by FinishedRowsAreFedPad below.)
TYPED_TEST(GenerationTest, StopsAtEosAndEmitsPadAfterIt) {
  const std::string dir = "tests/data/openmoe/tiny8b";
  absl::StatusOr<OpenMoeConfig> config = LoadConfig(dir + "/config.json");
  ASSERT_TRUE(config.ok());
  auto reader = CheckpointReader::Open(dir);
  ASSERT_TRUE(reader.ok());
  const Prompt p = LoadPrompt(dir);
  const int64_t max_steps = 12, pad = config->pad_token_id;
  auto free_model = OpenMoeModel<TypeParam>::FromCheckpoint(*config, *reader);
  ASSERT_TRUE(free_model.ok());
  int64_t free_steps = 0;
  const std::vector<int64_t> free = StepByStepGreedy(*free_model, p, /*eos=*/-1, max_steps, &free_steps);
  ASSERT_EQ(free_steps, max_steps);
  // EOS := row 0's first token that it has not produced before, from step 2 on.
  int64_t cut = 2;
  while (cut < max_steps && std::find(free.begin(), free.begin() + cut, free[cut]) != free.begin() + cut) ++cut;
  ASSERT_LT(cut, max_steps) << "row 0 repeats one token: pick another case";
  config->eos_token_id = free[cut];
  std::printf("eos := %lld (row 0's token %lld), batch %lld\n", (long long)free[cut], (long long)cut, (long long)p.batch);
  auto model = OpenMoeModel<TypeParam>::FromCheckpoint(*config, *reader);
  ASSERT_TRUE(model.ok());

  GenerationOptions options;
  options.max_new_tokens = max_steps;
  std::vector<std::vector<int64_t>> seen;  // what each step produced (and fed back)
  options.on_step = [&](const std::vector<int64_t>& ids) { seen.push_back(ids); };
  absl::StatusOr<GenerationResult> r = Generate(*model, p.ids, p.mask, p.batch, p.len, options);
  ASSERT_TRUE(r.ok()) << r.status();
  int64_t want_steps = 0;
  const std::vector<int64_t> want = StepByStepGreedy(*model, p, free[cut], max_steps, &want_steps);
  ASSERT_EQ(r->steps, want_steps);
  EXPECT_EQ(r->ids, want) << "on " << TypeParam::name();
  // Row 0: its free continuation up to EOS, then <pad>, also in what the steps fed back.
  for (int64_t s = 0; s < r->steps; ++s) {
    EXPECT_EQ(r->ids[s], s <= cut ? free[s] : pad) << "row 0 step " << s;
    EXPECT_EQ(seen[s][0], r->ids[s]) << "step " << s;
  }

  // One row: generation ends at its EOS, before max_new_tokens.
  Prompt one = p;
  one.batch = 1, one.ids.resize(p.len), one.mask.resize(p.len);
  int64_t one_free_steps = 0;
  const std::vector<int64_t> alone = StepByStepGreedy(*free_model, one, -1, max_steps, &one_free_steps);
  int64_t stop = 1;
  while (stop < max_steps && std::find(alone.begin(), alone.begin() + stop, alone[stop]) != alone.begin() + stop) ++stop;
  ASSERT_LT(stop, max_steps);
  config->eos_token_id = alone[stop];
  auto single = OpenMoeModel<TypeParam>::FromCheckpoint(*config, *reader);
  ASSERT_TRUE(single.ok());
  options.on_step = nullptr;
  r = Generate(*single, one.ids, one.mask, 1, one.len, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->steps, stop + 1);
  EXPECT_EQ(r->ids, std::vector<int64_t>(alone.begin(), alone.begin() + stop + 1));
}

// A copy of the checkpoint in `dir` whose experts' output weights (wo) are multiplied by `scale`,
// written under TEST_TMPDIR: the tiny random models' MoE output is small beside the residual, so
// that a dropped expert assignment rarely changes a greedy token; scaled, it does.
std::string CopyWithScaledExperts(const std::string& dir, float scale) {
  const char* tmp = std::getenv("TEST_TMPDIR");  // set by bazel test; /tmp when run directly
  const std::string out = std::string(tmp != nullptr ? tmp : "/tmp") + "/openmoe_scaled_experts." +
                          std::to_string(::getpid());
  std::filesystem::create_directories(out);
  std::filesystem::copy_file(dir + "/config.json", out + "/config.json", std::filesystem::copy_options::overwrite_existing);
  auto file = io::SafetensorsFile::Open(dir + "/model.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  std::vector<std::vector<float>> data;
  std::vector<io::TensorToWrite> tensors;
  data.reserve(file->tensors().size());
  for (const auto& [name, info] : file->tensors()) {
    data.emplace_back(info.num_elements());
    EXPECT_TRUE(file->ReadAsFloat(name, data.back().data(), data.back().size()).ok()) << name;
    if (name.find(".experts.wo") != std::string::npos) {
      for (float& x : data.back()) x *= scale;
    }
    tensors.push_back({name, io::DType::kF32, info.shape, data.back().data()});
  }
  EXPECT_TRUE(io::WriteSafetensors(out + "/model.safetensors", tensors).ok());
  return out;
}

// What a finished row is fed: row 0's prompt twice, with row 0 finished after 3 tokens (a per-row
// stop rule, as --stop uses). Until then both rows produce the same tokens; afterwards row 0 is
// fed <pad> while row 1 goes on. With capacity factor 0.25 and minimum capacity 1 a decode step's
// experts hold one token each (capacity is rounded up to even, so the factor must bring it to 0
// first), and row 0's token takes the expert queue slot first, so a finished row fed its last token (row 1's token too) would push row 1's top-1
// assignments out of every MoE layer and change its continuation.
TYPED_TEST(GenerationTest, FinishedRowsAreFedPad) {
  const std::string dir = "tests/data/openmoe/tiny8b";
  absl::StatusOr<OpenMoeConfig> config = LoadConfig(dir + "/config.json");
  ASSERT_TRUE(config.ok());
  config->router_min_capacity = 1, config->router_capacity_factor_eval = 0.25f;
  auto reader = CheckpointReader::Open(CopyWithScaledExperts(dir, 50.0f));
  ASSERT_TRUE(reader.ok());
  auto model = OpenMoeModel<TypeParam>::FromCheckpoint(*config, *reader);
  ASSERT_TRUE(model.ok());
  const Prompt fixture = LoadPrompt(dir);
  Prompt p = fixture;
  p.batch = 2;
  p.ids.assign(fixture.ids.begin(), fixture.ids.begin() + fixture.len);
  p.ids.insert(p.ids.end(), fixture.ids.begin(), fixture.ids.begin() + fixture.len);
  p.mask.assign(fixture.mask.begin(), fixture.mask.begin() + fixture.len);
  p.mask.insert(p.mask.end(), fixture.mask.begin(), fixture.mask.begin() + fixture.len);
  const int64_t max_steps = 10, pad = config->pad_token_id;
  const RowDone row0_after_3 = [](int64_t row, const std::vector<int64_t>& ids) { return row == 0 && ids.size() == 3; };
  GenerationOptions options;
  options.max_new_tokens = max_steps;
  options.row_done = row0_after_3;
  absl::StatusOr<GenerationResult> r = Generate(*model, p.ids, p.mask, p.batch, p.len, options);
  ASSERT_TRUE(r.ok()) << r.status();
  int64_t steps = 0;
  const std::vector<int64_t> want = StepByStepGreedy(*model, p, /*eos=*/-1, max_steps, &steps, row0_after_3);
  ASSERT_EQ(r->steps, steps);
  EXPECT_EQ(r->ids, want) << "on " << TypeParam::name();
  for (int64_t s = 3; s < r->steps; ++s) EXPECT_EQ(r->ids[s], pad) << "row 0 step " << s;
  // The premise: fed its last token instead of <pad>, finished row 0 would change row 1's tokens.
  int64_t other_steps = 0;
  const std::vector<int64_t> fed_last =
      StepByStepGreedy(*model, p, /*eos=*/-1, max_steps, &other_steps, row0_after_3, /*feed_last_when_done=*/true);
  EXPECT_NE(std::vector<int64_t>(fed_last.begin() + max_steps, fed_last.end()),
            std::vector<int64_t>(want.begin() + steps, want.end()))
      << "row 1 does not depend on what finished row 0 is fed: this test cannot tell";
}

// The benchmark ablation kernels::Tuning::decode_leave_out (generate_benchmark --leave_out) must
// skip each part in decode steps only: with a part left out, the prompt's logits are those of the
// full model and the first decode step's are not (an ablation that skipped nothing would report
// its part as free); with nothing left out, the decode step is the full one again.
TYPED_TEST(GenerationTest, DecodeLeaveOutSkipsItsPartInDecodeStepsOnly) {
  const std::string dir = "tests/data/openmoe/tiny8b";  // has MoE layers
  auto model = OpenMoeModel<TypeParam>::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  const Prompt p = LoadPrompt(dir);
  // Prompt logits and first decode-step logits with `leave_out`.
  auto run = [&](uint32_t leave_out, std::vector<float>* prompt_logits, std::vector<float>* step_logits) {
    model->context().tuning().decode_leave_out = leave_out;
    auto cache = model->NewCache(p.batch, p.len + 1);
    ASSERT_TRUE(cache.ok());
    auto first = model->Step(*cache, p.ids, p.mask, p.len, RoutingMode::kEval, /*last_only=*/true);
    ASSERT_TRUE(first.ok()) << first.status();
    auto next = model->Step(*cache, std::vector<int64_t>(p.batch, 7), std::vector<int64_t>(p.batch, 1), 1,
                            RoutingMode::kEval, /*last_only=*/true);
    ASSERT_TRUE(next.ok()) << next.status();
    *prompt_logits = *first, *step_logits = *next;
  };
  std::vector<float> full_prompt, full_step;
  run(0, &full_prompt, &full_step);
  for (uint32_t part : {kernels::kLeaveOutNorms, kernels::kLeaveOutAttentionCore, kernels::kLeaveOutAttentionProducts,
                        kernels::kLeaveOutDenseMlp, kernels::kLeaveOutMoe}) {
    std::vector<float> prompt, step;
    run(part, &prompt, &step);
    EXPECT_EQ(prompt, full_prompt) << "part " << part << ": the prompt is not a decode step";
    EXPECT_NE(step, full_step) << "part " << part << ": left out, yet the decode step is unchanged";
  }
  std::vector<float> prompt, step;
  run(0, &prompt, &step);
  EXPECT_EQ(step, full_step);
  model->context().tuning().decode_leave_out = 0;
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
