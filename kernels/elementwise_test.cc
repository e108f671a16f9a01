// Embedding gather, residual add and OpenMoE's swiglu combine on every backend.
#include "kernels/elementwise.h"

#include <cfloat>
#include <cmath>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/core/bf16.h"
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

// Convert between float and 16-bit types: every element is the round-to-nearest-even of its float
// (FromFloat, checked against the bit-level rounding of openmoe/core/bf16.h's tests), widening is
// exact; sizes with and without a tail of fewer than 8 elements, and views that start off the
// 16-byte boundary (the element-by-element path).
template <class Space, class T>
void CheckConvert() {
  for (auto [rows, cols, offset] : {std::make_tuple(3, 7, 0), std::make_tuple(4, 64, 0), std::make_tuple(5, 13, 0),
                                    std::make_tuple(2, 40, 1), std::make_tuple(1, 1, 0)}) {
    const int64_t n = rows * cols;
    std::vector<float> x = RandomNormal(n + offset, 3.0f, 70 + n);
    x[offset] = 1.0f + 1.0f / 256.0f;  // a tie for bf16: rounds to even (1.0)
    auto whole = ToDevice<Space>(x, 1, n + offset, "x");
    ConstMatrix<float, Space> xd(whole.data() + offset, rows, cols);
    Matrix<T, Space> narrow("narrow", rows, cols);
    ASSERT_TRUE((Convert<float, T, Space>(Space(), xd, narrow).ok()));
    const std::vector<T> got = ToHost(narrow);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(ToFloat(got[i]), ToFloat(FromFloat<T>(x[offset + i]))) << rows << "x" << cols << "+" << offset << " at " << i;
    }
    if constexpr (std::is_same_v<T, bf16>) EXPECT_EQ(ToFloat(got[0]), 1.0f);  // the tie went to even
    Matrix<float, Space> wide("wide", rows, cols);
    ASSERT_TRUE((Convert<T, float, Space>(Space(), ConstMatrix<T, Space>(narrow), wide).ok()));
    const std::vector<float> back = ToHost(wide);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(back[i], ToFloat(got[i])) << i;
  }
  Matrix<T, Space> bad("bad_shape", 2, 3);
  EXPECT_NE(std::string(Convert<float, T, Space>(Space(), ToDevice<Space>(std::vector<float>(6), 3, 2), bad).message())
                .find("bad_shape"), std::string::npos);
}

TYPED_TEST(ElementwiseTest, ConvertRoundsEachElementAndWidensExactly) {
  CheckConvert<TypeParam, bf16>();
  CheckConvert<TypeParam, f16>();
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
