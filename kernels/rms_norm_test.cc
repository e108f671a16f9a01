// RMSNorm on every enabled backend (Serial, OpenMP / Cuda) against the double-precision scalar
// reference, on awkward sizes.
#include "kernels/rms_norm.h"

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <random>
#include <utility>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/elementwise.h"
#include "kernels/reference/rms_norm.h"
#include "openmoe/core/test_util.h"

namespace openmoe::kernels {
namespace {

constexpr uint32_t kSeed = 20261129;

struct Case {
  int64_t rows;    // T
  int64_t hidden;  // H
  float scale;     // magnitude of x; tiny values make eps dominate the variance
};

std::vector<float> RandomVector(size_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& e : v) e = scale * normal(rng);
  return v;
}

template <class ExecSpace>
class RmsNormTest : public ::testing::Test {
 protected:
  // Runs the kernel on ExecSpace and returns y [rows, hidden] on the host.
  std::vector<float> Run(const std::vector<float>& x_host, const std::vector<float>& w_host,
                         int64_t rows, int64_t hidden, float eps, bool in_place = false) {
    Matrix<float, ExecSpace> x("x", rows, hidden);  // [T, H]
    Vector<float, ExecSpace> w("w", hidden);        // [H]
    Matrix<float, ExecSpace> y = in_place ? x : Matrix<float, ExecSpace>("y", rows, hidden);
    Kokkos::deep_copy(x, Kokkos::View<const float**, Kokkos::LayoutRight, Kokkos::HostSpace,
                                      Kokkos::MemoryUnmanaged>(x_host.data(), rows, hidden));
    Kokkos::deep_copy(w, Kokkos::View<const float*, Kokkos::LayoutRight, Kokkos::HostSpace,
                                      Kokkos::MemoryUnmanaged>(w_host.data(), hidden));
    ExecSpace space;
    absl::Status status = RmsNorm<float>(space, x, w, y, eps);
    EXPECT_TRUE(status.ok()) << status;
    space.fence();
    std::vector<float> y_host(rows * hidden);
    Kokkos::deep_copy(Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace,
                                   Kokkos::MemoryUnmanaged>(y_host.data(), rows, hidden),
                      y);
    return y_host;
  }

  // Float32 accumulation of H squares has relative error <= ~H * eps32/2 (worst case); the
  // rsqrt, divide and two multiplies add a few ulps. Bound: (H + 8) * eps32 relative.
  void ExpectMatchesReference(const Case& c, bool in_place = false) {
    std::mt19937 rng(kSeed + c.rows * 1000 + c.hidden);
    const std::vector<float> x = RandomVector(c.rows * c.hidden, c.scale, rng);
    const std::vector<float> w = RandomVector(c.hidden, 1.0f, rng);
    std::vector<float> expected;
    reference::RmsNorm(x, w, c.rows, c.hidden, kRmsNormDefaultEps, expected);
    const std::vector<float> actual = Run(x, w, c.rows, c.hidden, kRmsNormDefaultEps, in_place);
    const double rel_tol = (c.hidden + 8) * double(FLT_EPSILON);
    for (int64_t i = 0; i < c.rows * c.hidden; ++i) {
      ASSERT_NEAR(actual[i], expected[i], rel_tol * std::fabs(expected[i]) + 1e-30)
          << "backend " << ExecSpace::name() << " rows " << c.rows << " hidden " << c.hidden
          << " at row " << i / c.hidden << " col " << i % c.hidden << " (seed " << kSeed << ")";
    }
  }
};

TYPED_TEST_SUITE_P(RmsNormTest);

TYPED_TEST_P(RmsNormTest, MatchesReferenceOnAwkwardSizes) {
  std::printf("seed %u, backend %s\n", kSeed, TypeParam::name());
  for (const Case& c : {Case{19, 111, 1.0f}, Case{1, 1, 3.0f}, Case{3, 7, 0.5f},
                        Case{33, 2048, 1.0f}, Case{5, 4096, 10.0f}, Case{2, 989, 1.0f}}) {
    this->ExpectMatchesReference(c);
  }
}

TYPED_TEST_P(RmsNormTest, EpsDominatesTinyInputs) {
  // x ~ 1e-4 gives mean(x^2) ~ 1e-8 << eps = 1e-6: a kernel that drops or misplaces eps fails.
  this->ExpectMatchesReference(Case{19, 111, 1e-4f});
}

TYPED_TEST_P(RmsNormTest, InPlaceEqualsOutOfPlace) {
  this->ExpectMatchesReference(Case{19, 111, 1.0f}, /*in_place=*/true);
}

// rows = 0 or hidden = 0: ok, and nothing written. x and y are views of extent 0 on the start of
// buffers filled with sentinels (an unmanaged view keeps its pointer), so a kernel that writes any
// element, e.g. y(0, 0), or writes x, changes a buffer.
TYPED_TEST_P(RmsNormTest, EmptyInputIsANoOp) {
  using Space = TypeParam;
  constexpr float kInput = 3.0f, kSentinel = -12345.0f;
  for (const auto& [rows, hidden] : {std::pair<int64_t, int64_t>{0, 111}, std::pair<int64_t, int64_t>{4, 0}}) {
    for (const bool in_place : {false, true}) {
      Matrix<float, Space> x_buffer("x_buffer", 4, 111), y_buffer("y_buffer", 4, 111);
      Vector<float, Space> w_buffer("w_buffer", 111);
      Kokkos::deep_copy(x_buffer, kInput);
      Kokkos::deep_copy(y_buffer, kSentinel);
      Kokkos::deep_copy(w_buffer, 1.0f);
      Matrix<float, Space> x(x_buffer.data(), rows, hidden);
      Matrix<float, Space> y = in_place ? x : Matrix<float, Space>(y_buffer.data(), rows, hidden);
      Vector<float, Space> w(w_buffer.data(), hidden);
      Space space;
      const absl::Status status = RmsNorm<float>(space, x, w, y);
      space.fence();
      ASSERT_TRUE(status.ok()) << status << " rows " << rows << " hidden " << hidden;
      EXPECT_EQ(testing::ToHost(x_buffer), std::vector<float>(4 * 111, kInput))
          << "x written: rows " << rows << " hidden " << hidden << " in place " << in_place;
      EXPECT_EQ(testing::ToHost(y_buffer), std::vector<float>(4 * 111, kSentinel))
          << "y written: rows " << rows << " hidden " << hidden << " in place " << in_place;
    }
  }
}

TYPED_TEST_P(RmsNormTest, RejectsMismatchedShapesNamingTheTensor) {
  using Space = TypeParam;
  Matrix<float, Space> x("x", 4, 8), y_bad("y_bad", 4, 9);
  Vector<float, Space> w("w", 8), w_bad("w_bad", 7);
  absl::Status s = RmsNorm<float>(Space(), x, w_bad, x);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("w_bad"), std::string::npos) << s;
  s = RmsNorm<float>(Space(), x, w, y_bad);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("y_bad"), std::string::npos) << s;
  s = RmsNorm<float>(Space(), x, w, x, 0.0f);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("eps"), std::string::npos) << s;
}

TYPED_TEST_P(RmsNormTest, FusedAddNormEqualsAddThenNorm) {
  using Space = TypeParam;
  // hidden 111: the element-wise kernel (bit-identical to add then norm); 2048 and 8192: the
  // 16-byte packed kernel (8192: packs beyond the ones a CUDA thread keeps in registers), whose
  // sum of squares is added in another order (float32 rounding only: the relative difference of
  // y is a few ulps, bounded here by 1e-5).
  for (const int64_t hidden : {111, 2048, 8192}) {
    const int64_t rows = 19;
    std::mt19937 rng(kSeed);
    const std::vector<float> h0 = RandomVector(rows * hidden, 1.0f, rng), delta = RandomVector(rows * hidden, 1.0f, rng);
    const std::vector<float> w = RandomVector(hidden, 1.0f, rng);
    auto h1 = testing::ToDevice<Space>(h0, rows, hidden, "h1"), h2 = testing::ToDevice<Space>(h0, rows, hidden, "h2");
    auto d = testing::ToDevice<Space>(delta, rows, hidden, "delta");
    auto wd = testing::ToDevice<Space>(w, 1, hidden, "w");
    Vector<float, Space> weight(wd.data(), hidden);
    Matrix<float, Space> y1("y1", rows, hidden), y2("y2", rows, hidden);
    ASSERT_TRUE(AddInPlace<float>(Space(), h1, d).ok());
    ASSERT_TRUE(RmsNorm<float>(Space(), h1, weight, y1).ok());
    ASSERT_TRUE(AddRmsNorm<float>(Space(), h2, d, weight, y2).ok());
    EXPECT_EQ(testing::ToHost(h2), testing::ToHost(h1));
    const std::vector<float> got = testing::ToHost(y2), want = testing::ToHost(y1);
    if (hidden == 111) {
      EXPECT_EQ(got, want);
    } else {
      for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5 * std::fabs(want[i]) + 1e-7) << i;
    }
  }
}

REGISTER_TYPED_TEST_SUITE_P(RmsNormTest, MatchesReferenceOnAwkwardSizes, EpsDominatesTinyInputs,
                            InPlaceEqualsOutOfPlace, EmptyInputIsANoOp,
                            RejectsMismatchedShapesNamingTheTensor, FusedAddNormEqualsAddThenNorm);
INSTANTIATE_TYPED_TEST_SUITE_P(AllBackends, RmsNormTest,
                               testing::Backends);

}  // namespace
}  // namespace openmoe::kernels
