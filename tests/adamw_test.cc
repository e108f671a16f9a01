// AdamW step 1 from zero moments on the fixtures: the fixtures' parameters and step-1 gradients
// in, their float64 reference parameters after the step out, for every parameter tensor, with
// the README's tolerance (1e-6 absolute where |g| >= 1e-3 of the tensor's largest gradient, where
// the update is a well-defined lr * sign(g); 2 lr elsewhere, where a float32 gradient's sign is
// not determined).
#include <cmath>
#include <string>
#include <vector>

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

// Three steps (t = 4, 5, 6) resumed from non-zero moments, with weight decay, a gradient whose
// sign flips, a zero gradient (moments only decay) and a large one: every term of the update and
// the stored m, v are exercised. Expected values: PyTorch's AdamW algorithm evaluated in Python
// float64 by hand (the script is in the comment below), not by this code.
//   lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.1; per step t and element i:
//   p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2
//   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Tolerance: float32 has 2.4e-7 spacing at |p| = 2, and the inputs are float32 roundings of the
// decimal values (relative 6e-8); 1e-6 absolute on p and 1e-6 relative on m and v leave a few
// ulps. Dropping momentum, bias correction, weight decay or the stored moments misses by > 1e-4.
TYPED_TEST(AdamWTest, ThreeStepsFromNonZeroMomentsMatchHandComputedValues) {
  using Space = TypeParam;
  kernels::AdamWOptions options;
  options.lr = 1e-2, options.beta1 = 0.9, options.beta2 = 0.999, options.eps = 1e-8, options.weight_decay = 0.1;
  const std::vector<float> p0 = {0.5f, -1.25f, 2.0f, 0.03125f};
  const std::vector<float> m0 = {0.02f, -0.01f, 0.0f, 0.5f};
  const std::vector<float> v0 = {4e-4f, 1e-4f, 1e-6f, 0.25f};
  const std::vector<std::vector<float>> grads = {{0.1f, 0.2f, -0.3f, 0.0f}, {-0.05f, 0.2f, 0.001f, 0.0f}, {0.3f, -0.4f, 0.0f, 1.0f}};
  const double want_p[3][4] = {{0.4969575634948018, -1.2504590543599972, 2.0037792966582653, 0.029564002107493447},
                               {0.4947432821634407, -1.253055493660399, 2.006642222133117, 0.028135798808138025},
                               {0.4906955351040932, -1.2506296032761555, 2.0088300498450793, 0.026574576922483106}};
  const double want_m[4] = {0.048179999999999994, -0.013089999999999997, -0.024209999999999995, 0.4645};
  const double want_v[4] = {0.0005012787096000001, 0.00033958033990000026, 9.081809199900008e-05, 0.25025074975};
  auto pd = testing::ToDevice<Space>(p0, 1, 4, "p"), md = testing::ToDevice<Space>(m0, 1, 4, "m");
  auto vd = testing::ToDevice<Space>(v0, 1, 4, "v");
  Vector<float, Space> param(pd.data(), 4), m(md.data(), 4), v(vd.data(), 4);
  for (int s = 0; s < 3; ++s) {
    auto gd = testing::ToDevice<Space>(grads[s], 1, 4, "g");
    ASSERT_TRUE(kernels::AdamWStep<Space>(Space(), param, ConstVector<float, Space>(gd.data(), 4), m, v, 4 + s, options).ok());
    const std::vector<float> got = testing::ToHost(pd);
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(got[i], want_p[s][i], 1e-6) << "p[" << i << "] after step " << 4 + s << " on " << Space::name();
  }
  const std::vector<float> got_m = testing::ToHost(md), got_v = testing::ToHost(vd);
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(got_m[i], want_m[i], 1e-6 * std::fabs(want_m[i])) << "m[" << i << "] on " << Space::name();
    EXPECT_NEAR(got_v[i], want_v[i], 1e-6 * std::fabs(want_v[i])) << "v[" << i << "] on " << Space::name();
  }
}

// The fused step (weights rounded into the 16-bit working copy in AdamW's pass) leaves weights and
// moments bit-identical to AdamWStep, and the copy equals the updated weights rounded to T, as a
// separate conversion would give (FromFloat, round to nearest even). Seed 17, 1000 elements.
template <class T, class Space>
void ExpectFusedCastMatchesStepThenRound() {
  const int64_t n = 1000;
  kernels::AdamWOptions options;
  options.lr = 1e-2, options.weight_decay = 0.1;
  const std::vector<float> p0 = testing::RandomNormal(n, 1.0f, 17), g = testing::RandomNormal(n, 0.1f, 18);
  auto pa = testing::ToDevice<Space>(p0, 1, n), pb = testing::ToDevice<Space>(p0, 1, n), gd = testing::ToDevice<Space>(g, 1, n);
  Vector<float, Space> ma("ma", n), va("va", n), mb("mb", n), vb("vb", n);
  Vector<T, Space> working("working", n);
  for (int64_t step = 1; step <= 2; ++step) {
    ASSERT_TRUE(kernels::AdamWStep<Space>(Space(), Vector<float, Space>(pa.data(), n), ConstVector<float, Space>(gd.data(), n), ma, va,
                                          step, options).ok());
    ASSERT_TRUE((kernels::AdamWStepAndCast<T, Space>(Space(), Vector<float, Space>(pb.data(), n), ConstVector<float, Space>(gd.data(), n),
                                                     mb, vb, step, options, working).ok()));
  }
  const std::vector<float> a = testing::ToHost(pa), b = testing::ToHost(pb);
  EXPECT_EQ(a, b);
  EXPECT_EQ(testing::ToHost(ma), testing::ToHost(mb));
  EXPECT_EQ(testing::ToHost(va), testing::ToHost(vb));
  const std::vector<T> w = testing::ToHost(working);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(ToFloat(w[i]), ToFloat(FromFloat<T>(a[i]))) << "working[" << i << "] of weight " << a[i] << " on " << Space::name();
  }
}

TYPED_TEST(AdamWTest, FusedCastMatchesStepThenRound) {
  ExpectFusedCastMatchesStepThenRound<bf16, TypeParam>();
  ExpectFusedCastMatchesStepThenRound<f16, TypeParam>();
}

}  // namespace
}  // namespace openmoe
