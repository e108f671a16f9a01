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

}  // namespace
}  // namespace openmoe
