// Token selection: greedy tie-breaking, the vocabulary limit, repetition penalty, and the
// distributions of top-k / top-p / temperature sampling against their definitions.
#include "openmoe/runtime/sampling.h"

#include <cmath>
#include <map>

#include "gtest/gtest.h"

namespace openmoe {
namespace {

TEST(Sampling, GreedyTakesTheFirstMaximumWithinTheAllowedVocabulary) {
  std::mt19937_64 rng(1);
  const std::vector<float> logits = {0.5f, 2.0f, 2.0f, -1.0f, 9.0f};
  SamplingOptions greedy;
  EXPECT_EQ(SelectToken(logits.data(), 5, {}, greedy, rng), 4);
  EXPECT_EQ(SelectToken(logits.data(), 4, {}, greedy, rng), 1);  // id 4 is beyond the tokenizer
}

TEST(Sampling, RepetitionPenaltyFollowsHuggingFace) {
  std::mt19937_64 rng(1);
  SamplingOptions o;
  o.repetition_penalty = 3.0f;
  // Seen id 1 (score 2 -> 2/3) and id 0 (score -0.5 -> -1.5): id 2 (1.0) now wins.
  EXPECT_EQ(SelectToken(std::vector<float>{-0.5f, 2.0f, 1.0f}.data(), 3, {1, 0, 1}, o, rng), 2);
}

// The penalty divides a seen id's score once, however often the id was seen: id 1 seen three
// times scores 2 / 1.5 = 1.33 and still beats id 2 (1.0); applied per occurrence it would fall
// to 0.59 and lose.
TEST(Sampling, RepetitionPenaltyAppliesOncePerId) {
  std::mt19937_64 rng(1);
  SamplingOptions o;
  o.repetition_penalty = 1.5f;
  EXPECT_EQ(SelectToken(std::vector<float>{-0.5f, 2.0f, 1.0f}.data(), 3, {1, 1, 1}, o, rng), 1);
}

// Empirical frequencies over many draws, seed printed.
std::map<int64_t, double> Frequencies(const std::vector<float>& logits, const SamplingOptions& o, int draws,
                                      const std::vector<int64_t>& history = {}) {
  std::mt19937_64 rng(o.seed);
  std::map<int64_t, double> freq;
  for (int i = 0; i < draws; ++i) freq[SelectToken(logits.data(), logits.size(), history, o, rng)] += 1.0 / draws;
  return freq;
}

TEST(Sampling, TemperatureTopKTopPMatchTheirDefinitions) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplingOptions o;
  o.greedy = false, o.seed = 1234;
  std::printf("seed %llu\n", static_cast<unsigned long long>(o.seed));
  const int draws = 200000;  // binomial std of a frequency <= 0.0012: 5 sigma = 0.006
  auto f = Frequencies(logits, o, draws);
  EXPECT_NEAR(f[0], 0.5, 0.006);
  EXPECT_NEAR(f[1], 0.3, 0.006);
  EXPECT_NEAR(f[3], 0.05, 0.006);
  o.top_k = 2;  // renormalised over {0, 1}: 0.625 / 0.375
  f = Frequencies(logits, o, draws);
  EXPECT_NEAR(f[0], 0.625, 0.006);
  EXPECT_EQ(f.count(2), 0u);
  EXPECT_EQ(f.count(3), 0u);
  o.top_k = 0, o.top_p = 0.7f;  // prefix {0, 1} reaches 0.8 >= 0.7
  f = Frequencies(logits, o, draws);
  EXPECT_NEAR(f[0], 0.625, 0.006);
  EXPECT_EQ(f.count(2), 0u);
  o.top_p = 1.0f, o.temperature = 0.5f;  // p^2 renormalised: 0.25/0.09/0.0225/0.0025 over 0.365
  f = Frequencies(logits, o, draws);
  EXPECT_NEAR(f[0], 0.25 / 0.365, 0.006);
  EXPECT_NEAR(f[2], 0.0225 / 0.365, 0.006);
}

TEST(Sampling, ValidatesOptionsNamingTheFlag) {
  SamplingOptions o;
  o.temperature = 0;
  EXPECT_NE(std::string(ValidateSampling(o).message()).find("--temperature"), std::string::npos);
  o = {}, o.top_p = 1.5f;
  EXPECT_NE(std::string(ValidateSampling(o).message()).find("--top_p"), std::string::npos);
  o = {}, o.top_k = -1;
  EXPECT_NE(std::string(ValidateSampling(o).message()).find("--top_k"), std::string::npos);
}

// Sampling draws from the penalised scores: scores {2, 1} with id 0 seen twice and penalty 2
// become {1, 1}, a fair coin. Unpenalised, id 0 has e/(e+1) = 0.731; penalised per occurrence
// ({0.5, 1}) 0.378. Seed printed; 5 binomial sigmas = 0.006 at 200000 draws.
TEST(Sampling, RepetitionPenaltyAppliesBeforeSampling) {
  SamplingOptions o;
  o.greedy = false, o.seed = 4321, o.repetition_penalty = 2.0f;
  std::printf("seed %llu\n", static_cast<unsigned long long>(o.seed));
  const auto f = Frequencies({2.0f, 1.0f}, o, 200000, /*history=*/{0, 0});
  EXPECT_NEAR(f.at(0), 0.5, 0.006);
  EXPECT_NEAR(f.at(1), 0.5, 0.006);
}

}  // namespace
}  // namespace openmoe
