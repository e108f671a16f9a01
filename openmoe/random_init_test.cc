// The initialiser's draws: the same bits on every backend (counter-based), bf16 weights are the
// float draws rounded, norms 1, the embedding's padding row 0, other seeds give other draws. The
// distribution itself (mean, std per the spec) is checked by train_parity_test's
// RandomInitDrawsUpstreamInitialiser.
#include "openmoe/random_init.h"

#include <vector>

#include "gtest/gtest.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/test_util.h"

namespace openmoe {
namespace {

template <class Space>
class RandomInitTest : public ::testing::Test {};
TYPED_TEST_SUITE(RandomInitTest, testing::Backends);

template <class T, class Space>
std::vector<T> Draw(const OpenMoeConfig& config, const TensorSpec& spec, uint64_t seed) {
  Vector<T, Space> w("w", spec.numel());
  FillInitialValues<T>(Space(), config, spec, seed, w);
  return testing::ToHost(w);
}

TYPED_TEST(RandomInitTest, SameBitsOnEveryBackendAndBf16IsTheRoundedDraw) {
  absl::StatusOr<OpenMoeConfig> config = LoadConfig("tests/data/openmoe/tiny8b/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  for (const TensorSpec& spec : CheckpointTable(*config)) {
    const std::vector<float> here = Draw<float, TypeParam>(*config, spec, 7);
    const std::vector<float> serial = Draw<float, Kokkos::Serial>(*config, spec, 7);
    ASSERT_EQ(here, serial) << spec.name << " on " << TypeParam::name();
    const std::vector<bf16> rounded = Draw<bf16, TypeParam>(*config, spec, 7);
    for (size_t i = 0; i < here.size(); ++i) ASSERT_EQ(float(rounded[i]), float(FromFloat<bf16>(here[i]))) << spec.name;
    if (spec.orientation == Orientation::kVector) {
      for (float x : here) ASSERT_EQ(x, 1.0f) << spec.name;
      continue;
    }
    EXPECT_NE(here, (Draw<float, TypeParam>(*config, spec, 8))) << spec.name;
    if (spec.name == "model.embed_tokens.weight") {
      const int64_t H = config->hidden_size, pad = config->pad_token_id;
      for (int64_t h = 0; h < H; ++h) ASSERT_EQ(here[pad * H + h], 0.0f);
      EXPECT_NE(here[(pad + 1) * H], 0.0f);
    }
  }
}

// A part [first, first + n) of a tensor (an expert-parallel rank's experts, ExpertShard) gets
// exactly those elements of the whole tensor's draw, the padding row included.
TYPED_TEST(RandomInitTest, PartIsTheSliceOfTheWholeDraw) {
  absl::StatusOr<OpenMoeConfig> config = LoadConfig("tests/data/openmoe/tiny8b/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  for (const TensorSpec& spec : CheckpointTable(*config)) {
    const std::vector<float> whole = Draw<float, TypeParam>(*config, spec, 7);
    const int64_t n = spec.numel();
    const int64_t pad_row = spec.name == "model.embed_tokens.weight" ? config->pad_token_id * config->hidden_size : 0;
    for (auto [first, count] : {std::make_pair(int64_t(0), n / 3), std::make_pair(n / 3, n - n / 3),
                                std::make_pair(pad_row > 0 ? pad_row - 5 : n / 2, std::min<int64_t>(n / 4, 64))}) {
      Vector<float, TypeParam> part("part", count);
      FillInitialValues<float>(TypeParam(), *config, spec, 7, part, first);
      const std::vector<float> got = testing::ToHost(part);
      ASSERT_EQ(got, std::vector<float>(whole.begin() + first, whole.begin() + first + count))
          << spec.name << " [" << first << ", " << first + count << ")";
    }
  }
}

}  // namespace
}  // namespace openmoe
