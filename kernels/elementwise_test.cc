// Embedding gather, residual add and OpenMoE's swiglu combine on every backend.
#include "kernels/elementwise.h"

#include <cfloat>
#include <cmath>

#include "gtest/gtest.h"
#include "openmoe/core/test_util.h"

namespace openmoe::kernels {
namespace {

using openmoe::testing::RandomNormal;
using openmoe::testing::ToDevice;
using openmoe::testing::ToHost;

template <class Space>
class ElementwiseTest : public ::testing::Test {};
TYPED_TEST_SUITE(ElementwiseTest, openmoe::testing::Backends);

TYPED_TEST(ElementwiseTest, SwigluIsLinearFirstHalfTimesSiluSecondHalfTimesUp) {
  using Space = TypeParam;
  const int64_t T = 19, I = 111;
  const std::vector<float> gate = RandomNormal(T * 2 * I, 2.0f, 3), up = RandomNormal(T * I, 1.0f, 4);
  Matrix<float, Space> out("out", T, I);
  ASSERT_TRUE(SwigluCombine<float>(Space(), ToDevice<Space>(gate, T, 2 * I), ToDevice<Space>(up, T, I), out).ok());
  const std::vector<float> got = ToHost(out);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < I; ++i) {
      const double g1 = gate[t * 2 * I + i], g2 = gate[t * 2 * I + I + i];
      const double want = g1 * (g2 / (1.0 + std::exp(-g2))) * up[t * I + i];
      ASSERT_NEAR(got[t * I + i], want, 8 * FLT_EPSILON * std::fabs(want) + 1e-30) << t << "," << i;
    }
  Matrix<float, Space> bad("bad", T, I + 1);
  EXPECT_FALSE(SwigluCombine<float>(Space(), ToDevice<Space>(gate, T, 2 * I), ToDevice<Space>(up, T, I), bad).ok());
}

TYPED_TEST(ElementwiseTest, FusedSwigluEqualsSwigluOnTheSplitParts) {
  using Space = TypeParam;
  const int64_t T = 19, I = 37;
  const std::vector<float> gate = RandomNormal(T * 2 * I, 2.0f, 13), up = RandomNormal(T * I, 1.0f, 14);
  std::vector<float> gate_up;
  for (int64_t t = 0; t < T; ++t) {
    gate_up.insert(gate_up.end(), gate.begin() + t * 2 * I, gate.begin() + (t + 1) * 2 * I);
    gate_up.insert(gate_up.end(), up.begin() + t * I, up.begin() + (t + 1) * I);
  }
  Matrix<float, Space> a("a", T, I), b("b", T, I);
  ASSERT_TRUE(SwigluCombine<float>(Space(), ToDevice<Space>(gate, T, 2 * I), ToDevice<Space>(up, T, I), a).ok());
  ASSERT_TRUE(SwigluCombineFused<float>(Space(), ToDevice<Space>(gate_up, T, 3 * I), b).ok());
  EXPECT_EQ(ToHost(b), ToHost(a));
  EXPECT_FALSE(SwigluCombineFused<float>(Space(), ToDevice<Space>(gate, T, 2 * I), b).ok());
}

TYPED_TEST(ElementwiseTest, EmbeddingGathersRowsAndAddAccumulates) {
  using Space = TypeParam;
  const int64_t V = 7, H = 5;
  const std::vector<float> table = RandomNormal(V * H, 1.0f, 8);
  const std::vector<int64_t> ids = {6, 0, 3, 3};
  Vector<int64_t, Space> idsd("ids", ids.size());
  Kokkos::deep_copy(idsd, Kokkos::View<const int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(ids.data(), ids.size()));
  Matrix<float, Space> out("out", ids.size(), H);
  ASSERT_TRUE(Embedding<float>(Space(), ToDevice<Space>(table, V, H), idsd, out).ok());
  ASSERT_TRUE(AddInPlace<float>(Space(), out, ToDevice<Space>(std::vector<float>(ids.size() * H, 1.0f), ids.size(), H)).ok());
  const std::vector<float> got = ToHost(out);
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t h = 0; h < H; ++h) EXPECT_EQ(got[t * H + h], table[ids[t] * H + h] + 1.0f);
}

}  // namespace
}  // namespace openmoe::kernels
