// AdamW step 1 from zero moments on the fixtures: the fixtures' parameters and step-1 gradients
// in, their float64 reference parameters after the step out, for every parameter tensor, with
// the README's tolerance (1e-6 absolute where |g| >= 1e-3 of the tensor's largest gradient, where
// the update is a well-defined lr * sign(g); 2 lr elsewhere, where a float32 gradient's sign is
// not determined).
#include <cmath>
#include <string>

#include "gtest/gtest.h"
#include "kernels/adamw.h"
#include "openmoe/core/test_util.h"
#include "openmoe/io/safetensors.h"
#include "tests/fixtures.h"

namespace openmoe {
namespace {

template <class Space>
class AdamWTest : public ::testing::Test {};
TYPED_TEST_SUITE(AdamWTest, testing::Backends);

TYPED_TEST(AdamWTest, StepOneMatchesTheFixtures) {
  using Space = TypeParam;
  for (const std::string name : {"tiny8b", "tinybase"}) {
    const std::string dir = "tests/data/openmoe/" + name;
    const kernels::AdamWOptions options = testing::FixtureAdamW(testing::FixtureJson(dir));
    auto model = io::SafetensorsFile::Open(dir + "/model.safetensors");
    auto expected = io::SafetensorsFile::Open(dir + "/expected.safetensors");
    ASSERT_TRUE(model.ok() && expected.ok());
    int tensors = 0;
    for (const auto& [param_name, info] : model->tensors()) {
      const int64_t n = info.num_elements();
      std::vector<float> p(n), g(n), want(n);
      ASSERT_TRUE(model->ReadAsFloat(param_name, p.data(), n).ok());
      ASSERT_TRUE(expected->ReadAsFloat("grad." + param_name, g.data(), n).ok()) << param_name;
      ASSERT_TRUE(expected->ReadAsFloat("adamw_step1." + param_name, want.data(), n).ok()) << param_name;
      auto pd = testing::ToDevice<Space>(p, 1, n, param_name), gd = testing::ToDevice<Space>(g, 1, n, "g");
      Vector<float, Space> param(pd.data(), n), m("m", n), v("v", n);
      ASSERT_TRUE(kernels::AdamWStep<Space>(Space(), param, ConstVector<float, Space>(gd.data(), n), m, v, 1, options).ok());
      const std::vector<float> got = testing::ToHost(param);
      float max_g = 0;
      for (float e : g) max_g = std::max(max_g, std::fabs(e));
      for (int64_t i = 0; i < n; ++i) {
        const bool determined = std::fabs(g[i]) >= 1e-3f * max_g;
        ASSERT_NEAR(got[i], want[i], determined ? 1e-6 : 2 * options.lr)
            << name << " " << param_name << "[" << i << "] grad " << g[i] << " on " << Space::name();
      }
      ++tensors;
    }
    EXPECT_EQ(tensors, int(model->tensors().size()));
  }
}

}  // namespace
}  // namespace openmoe
