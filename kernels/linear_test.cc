// Linear (x @ w^T) and MatMul (x @ w) through Kokkos Kernels on every backend against the double
// reference, on awkward sizes, including accumulation and shape errors.
#include "kernels/linear.h"

#include <cfloat>
#include <cmath>
#include <type_traits>

#include "gtest/gtest.h"
#include "kernels/reference/ops.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/test_util.h"

namespace openmoe::kernels {
namespace {

using openmoe::testing::RandomNormal;
using openmoe::testing::ToDevice;
using openmoe::testing::ToHost;

// sum_k |x_k w_k| for every output: the scale of the float32 dot-product error bound.
std::vector<double> AbsProductSums(const std::vector<float>& x, const std::vector<float>& w, int64_t M, int64_t K,
                                   int64_t N, bool out_in) {
  std::vector<float> abs_x(x), abs_w(w);
  for (float& e : abs_x) e = std::fabs(e);
  for (float& e : abs_w) e = std::fabs(e);
  return reference::MatMul(abs_x, abs_w, M, K, N, out_in);
}

template <class Space>
class LinearTest : public ::testing::Test {};
TYPED_TEST_SUITE(LinearTest, openmoe::testing::Backends);

TYPED_TEST(LinearTest, MatchesReference) {
  using Space = TypeParam;
  // M <= 4 takes the host GEMV (host_gemv.h): (3, 777, 45) with tails of K, (1, 48, 300) several
  // column tasks / tiles.
  for (auto [M, K, N] : {std::make_tuple(19, 111, 37), std::make_tuple(1, 1, 1), std::make_tuple(48, 64, 192),
                         std::make_tuple(7, 989, 3), std::make_tuple(3, 777, 45), std::make_tuple(1, 48, 300)}) {
    for (bool out_in : {true, false}) {
      const uint32_t seed = 100 + M + K + N;
      const std::vector<float> x = RandomNormal(M * K, 1.0f, seed), w = RandomNormal(K * N, 1.0f, seed + 1);
      const std::vector<float> y0 = RandomNormal(M * N, 1.0f, seed + 2);
      for (bool accumulate : {false, true}) {
        auto y = ToDevice<Space>(y0, M, N, "y");
        auto xd = ToDevice<Space>(x, M, K, "x");
        auto wd = out_in ? ToDevice<Space>(w, N, K, "w") : ToDevice<Space>(w, K, N, "w");
        absl::Status s = out_in ? Linear<float>(ExecutionContext<Space>(), ConstMatrix<float, Space>(xd), ConstMatrix<float, Space>(wd), y, accumulate)
                                : MatMul<float>(ExecutionContext<Space>(), ConstMatrix<float, Space>(xd), ConstMatrix<float, Space>(wd), y, accumulate);
        ASSERT_TRUE(s.ok()) << s;
        const std::vector<float> got = ToHost(y);
        const std::vector<double> want = reference::MatMul(x, w, M, K, N, out_in);
        const std::vector<double> abs_sum = AbsProductSums(x, w, M, K, N, out_in);
        for (int64_t i = 0; i < M * N; ++i) {
          // Float32 dot product, worst case: |error| <= K * eps32 * sum_k |x_k w_k| (+ one
          // rounding of the accumulated y).
          const double bound = double(K) * FLT_EPSILON * abs_sum[i] + FLT_EPSILON * std::fabs(y0[i]) + 1e-7;
          const double expected = want[i] + (accumulate ? y0[i] : 0.0);
          ASSERT_NEAR(got[i], expected, bound) << Space::name() << " M" << M << " K" << K << " N" << N
                                               << (out_in ? " Linear" : " MatMul") << " acc " << accumulate
                                               << " seed " << seed;
        }
      }
    }
  }
}

// bf16 storage (LoopGemm or, for <= 4 rows, the GEMV on host, cublasGemmEx on CUDA, and on CUDA the weight-streaming kernels
// for Linear with <= 4 rows and 16-byte aligned rows): inputs are bf16 values, so the double
// reference of those exact values differs from the kernel by the float32 accumulation error plus
// one rounding of the result to bf16 (unit roundoff u = 2^-8 for its 8-bit significand).
// On CUDA every decode Linear kernel is forced in turn (and kAuto picks warp per column for
// K = 2048, 8192, split-K for the others); the aligned shapes reach the split-K kernel's
// variants: (3, 264, 129) one warp, bounds checks; (1, 3072, 64) 3 warps, exact; (2, 8192, 64)
// 8 warps; (2, 6144, 9) 6 warps; (4, 10400, 3) 8 warps, 2 rounds, bounds checks. Host backends
// run their one path four times.
TYPED_TEST(LinearTest, Bf16MatchesReferenceOfRoundedInputs) {
  using Space = TypeParam;
  using DK = DecodeLinearKernel;
  for (DK kernel : {DK::kAuto, DK::kCublas, DK::kWarpPerColumn, DK::kSplitK}) {
    ExecutionContext<Space> ctx;
    ctx.tuning().decode_linear_kernel = kernel;
    for (auto [M, K, N] : {std::make_tuple(19, 111, 37), std::make_tuple(5, 989, 3), std::make_tuple(1, 1, 1),
                           std::make_tuple(1, 2048, 37), std::make_tuple(3, 264, 129),
                           std::make_tuple(2, 8192, 64), std::make_tuple(1, 3072, 64),
                           std::make_tuple(2, 6144, 9), std::make_tuple(4, 10400, 3)}) {
      for (bool out_in : {true, false}) {
        for (bool accumulate : {false, true}) {
          const uint32_t seed = 500 + M + K + N;
          std::vector<float> x = RandomNormal(M * K, 1.0f, seed), w = RandomNormal(K * N, 1.0f, seed + 1);
          std::vector<float> y0 = RandomNormal(M * N, 1.0f, seed + 2);
          std::vector<bf16> xb, wb, yb;
          for (float& e : x) xb.push_back(bf16(e)), e = float(xb.back());
          for (float& e : w) wb.push_back(bf16(e)), e = float(wb.back());
          for (float& e : y0) yb.push_back(bf16(e)), e = float(yb.back());
          auto xd = ToDevice<Space>(xb, M, K, "x");
          auto wd = out_in ? ToDevice<Space>(wb, N, K, "w") : ToDevice<Space>(wb, K, N, "w");
          auto y  = ToDevice<Space>(yb, M, N, "y");
          absl::Status s = out_in ? Linear<bf16>(ctx, ConstMatrix<bf16, Space>(xd), ConstMatrix<bf16, Space>(wd), y, accumulate)
                                  : MatMul<bf16>(ctx, ConstMatrix<bf16, Space>(xd), ConstMatrix<bf16, Space>(wd), y, accumulate);
          ASSERT_TRUE(s.ok()) << s;
          const std::vector<bf16> got = ToHost(y);
          const std::vector<double> want = reference::MatMul(x, w, M, K, N, out_in);
          const std::vector<double> abs_sum = AbsProductSums(x, w, M, K, N, out_in);
          for (int64_t i = 0; i < M * N; ++i) {
            const double expected = want[i] + (accumulate ? y0[i] : 0.0);
            // With accumulate, cuBLAS may round the product to bf16 before adding y: two roundings.
            const double rounding = std::ldexp(std::fabs(expected), -8) +
                                    (accumulate ? std::ldexp(std::fabs(want[i]), -8) : 0.0);
            const double bound = double(K + 1) * FLT_EPSILON * (abs_sum[i] + std::fabs(y0[i])) + rounding + 1e-30;
            ASSERT_NEAR(float(got[i]), expected, bound) << Space::name() << " M" << M << " K" << K << " N" << N
                                                        << (out_in ? " Linear" : " MatMul") << " acc " << accumulate
                                                        << " kernel " << int(kernel) << " seed " << seed;
          }
        }
      }
    }
  }
}

// 16-bit products of 1-4 rows (decode), which on host backends take the vectorised GEMV of
// linear.cc and host_gemv.h (Linear: one sequential dot product per column, tasks of 64 columns;
// one bf16 row of x with K a multiple of 16 through the even/odd split, K = 48 ending in a half
// block; MatMul: column tiles of at most 256, N = 300 two of them, streaming w's rows) and on CUDA
// the decode kernels or cuBLAS: K and N not multiples of the vector width (K = 31 only the tail of
// the dot product, 33 one block and a tail, 777 24 blocks and a tail), against the double
// reference of the rounded inputs, with one rounding of the result (unit roundoff 2^-8 for bf16,
// 2^-11 for f16).
template <class Space, class T>
void CheckFewRows() {
  const int unit_exponent = std::is_same_v<T, bf16> ? -8 : -11;
  for (int64_t M : {1, 2, 3, 4}) {
    for (auto [K, N] : {std::make_pair(1, 1), std::make_pair(31, 17), std::make_pair(33, 300),
                        std::make_pair(777, 45), std::make_pair(64, 16), std::make_pair(48, 37)}) {
      for (bool out_in : {true, false}) {
        for (bool accumulate : {false, true}) {
          const uint32_t seed = 900 + M + K + N;
          std::vector<float> x = RandomNormal(M * K, 1.0f, seed), w = RandomNormal(K * N, 1.0f, seed + 1);
          std::vector<float> y0 = RandomNormal(M * N, 1.0f, seed + 2);
          std::vector<T> xt, wt, yt;
          for (float& e : x) xt.push_back(FromFloat<T>(e)), e = ToFloat(xt.back());
          for (float& e : w) wt.push_back(FromFloat<T>(e)), e = ToFloat(wt.back());
          for (float& e : y0) yt.push_back(FromFloat<T>(e)), e = ToFloat(yt.back());
          auto xd = ToDevice<Space, T>(xt, M, K, "x");
          auto wd = out_in ? ToDevice<Space, T>(wt, N, K, "w") : ToDevice<Space, T>(wt, K, N, "w");
          auto y  = ToDevice<Space, T>(yt, M, N, "y");
          ExecutionContext<Space> ctx;
          absl::Status s = out_in ? Linear<T>(ctx, ConstMatrix<T, Space>(xd), ConstMatrix<T, Space>(wd), y, accumulate)
                                  : MatMul<T>(ctx, ConstMatrix<T, Space>(xd), ConstMatrix<T, Space>(wd), y, accumulate);
          ASSERT_TRUE(s.ok()) << s;
          const std::vector<T> got = ToHost(y);
          const std::vector<double> want = reference::MatMul(x, w, M, K, N, out_in);
          const std::vector<double> abs_sum = AbsProductSums(x, w, M, K, N, out_in);
          for (int64_t i = 0; i < M * N; ++i) {
            const double expected = want[i] + (accumulate ? y0[i] : 0.0);
            // With accumulate, cuBLAS may round the product before adding y: two roundings.
            const double rounding = std::ldexp(std::fabs(expected), unit_exponent) +
                                    (accumulate ? std::ldexp(std::fabs(want[i]), unit_exponent) : 0.0);
            const double bound = double(K + 1) * FLT_EPSILON * (abs_sum[i] + std::fabs(y0[i])) + rounding + 1e-30;
            ASSERT_NEAR(ToFloat(got[i]), expected, bound)
                << Space::name() << " M" << M << " K" << K << " N" << N << (out_in ? " Linear" : " MatMul")
                << " acc " << accumulate << " element " << i << " seed " << seed;
          }
        }
      }
    }
  }
}

TYPED_TEST(LinearTest, FewRows16BitMatchReferenceOfRoundedInputs) {
  CheckFewRows<TypeParam, bf16>();
  CheckFewRows<TypeParam, f16>();
}

// c += a^T b (the weight gradients of training) against a double sum of the same (for bf16 / f16:
// rounded) operands, awkward sizes; c is float32 for every operand type.
template <class Space, class T>
void CheckTransposedProduct() {
  const int64_t M = 19, P = 7, Q = 11;
  std::vector<float> a = RandomNormal(M * P, 1.0f, 61), b = RandomNormal(M * Q, 1.0f, 62);
  const std::vector<float> c0 = RandomNormal(P * Q, 1.0f, 63);
  std::vector<T> a_t, b_t;
  for (float& e : a) a_t.push_back(FromFloat<T>(e)), e = ToFloat(a_t.back());
  for (float& e : b) b_t.push_back(FromFloat<T>(e)), e = ToFloat(b_t.back());
  auto c = ToDevice<Space>(c0, P, Q, "c");
  const absl::Status status = AddTransposedProduct<T, Space>(ExecutionContext<Space>(), ToDevice<Space, T>(a_t, M, P, "a"),
                                                             ToDevice<Space, T>(b_t, M, Q, "b"), c);
  ASSERT_TRUE(status.ok()) << status;
  const std::vector<float> got = ToHost(c);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t q = 0; q < Q; ++q) {
      double want = c0[p * Q + q], abs_sum = std::fabs(c0[p * Q + q]);
      for (int64_t m = 0; m < M; ++m) want += double(a[m * P + p]) * b[m * Q + q], abs_sum += std::fabs(a[m * P + p] * b[m * Q + q]);
      ASSERT_NEAR(got[p * Q + q], want, double(M + 1) * FLT_EPSILON * abs_sum) << p << "," << q;  // float32 sum bound
    }
  Matrix<float, Space> wrong("c_wrong", Q, P);
  EXPECT_NE(std::string(AddTransposedProduct<T, Space>(ExecutionContext<Space>(), ToDevice<Space, T>(a_t, M, P, "a"),
                                                       ToDevice<Space, T>(b_t, M, Q, "b"), wrong).message())
                .find("c_wrong"), std::string::npos);
}

TYPED_TEST(LinearTest, AddTransposedProductAccumulatesATransposeB) {
  CheckTransposedProduct<TypeParam, float>();
  CheckTransposedProduct<TypeParam, bf16>();
  CheckTransposedProduct<TypeParam, f16>();
}

// y (+)= x @ op(w) into float32 y (the input gradients of mixed-precision training) against a
// double sum of the same (for bf16 / f16: rounded) operands: a float32 bound, no 16-bit rounding of
// the result, for both weight layouts and with accumulation; a mismatched output is named.
template <class Space, class T>
void CheckProductIntoFloat() {
  for (auto [M, K, N] : {std::make_tuple(19, 37, 23), std::make_tuple(1, 5, 3), std::make_tuple(33, 130, 17)}) {
    for (bool out_in : {true, false}) {
      for (bool accumulate : {false, true}) {
        const uint32_t seed = 900 + M + K + N;
        std::vector<float> x = RandomNormal(M * K, 1.0f, seed), w = RandomNormal(K * N, 1.0f, seed + 1);
        const std::vector<float> y0 = RandomNormal(M * N, 1.0f, seed + 2);
        std::vector<T> x_t, w_t;
        for (float& e : x) x_t.push_back(FromFloat<T>(e)), e = ToFloat(x_t.back());
        for (float& e : w) w_t.push_back(FromFloat<T>(e)), e = ToFloat(w_t.back());
        auto y = ToDevice<Space>(y0, M, N, "y");
        const absl::Status status = ProductIntoFloat<T, Space>(
            ExecutionContext<Space>(), ToDevice<Space, T>(x_t, M, K, "x"),
            out_in ? ToDevice<Space, T>(w_t, N, K, "w") : ToDevice<Space, T>(w_t, K, N, "w"), y, out_in, accumulate);
        ASSERT_TRUE(status.ok()) << status;
        const std::vector<float> got = ToHost(y);
        const std::vector<double> want = reference::MatMul(x, w, M, K, N, out_in);
        const std::vector<double> abs_sum = AbsProductSums(x, w, M, K, N, out_in);
        for (int64_t i = 0; i < M * N; ++i) {
          const double expected = want[i] + (accumulate ? y0[i] : 0.0);
          ASSERT_NEAR(got[i], expected, double(K + 2) * FLT_EPSILON * (abs_sum[i] + std::fabs(y0[i])) + 1e-30)
              << M << "x" << K << "x" << N << " out_in " << out_in << " accumulate " << accumulate << " at " << i;
        }
      }
    }
  }
  Matrix<float, Space> wrong("y_wrong", 3, 4);
  std::vector<T> ones(12, FromFloat<T>(1.0f));
  EXPECT_NE(std::string(ProductIntoFloat<T, Space>(ExecutionContext<Space>(), ToDevice<Space, T>(ones, 3, 4, "x"),
                                                   ToDevice<Space, T>(ones, 3, 4, "w"), wrong, /*w_is_out_in=*/true)
                            .message())
                .find("y_wrong"), std::string::npos);
}

TYPED_TEST(LinearTest, ProductIntoFloatKeepsTheFloat32Sum) {
  CheckProductIntoFloat<TypeParam, float>();
  CheckProductIntoFloat<TypeParam, bf16>();
  CheckProductIntoFloat<TypeParam, f16>();
}

TYPED_TEST(LinearTest, RejectsMismatchedShapesNamingTheTensor) {
  using Space = TypeParam;
  Matrix<float, Space> x("x", 4, 8), w("w_proj", 5, 7), y("y", 4, 5);
  absl::Status s = Linear<float>(ExecutionContext<Space>(), ConstMatrix<float, Space>(x), ConstMatrix<float, Space>(w), y);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("w_proj"), std::string::npos) << s;
  Matrix<float, Space> w_ok("w", 5, 8), y_bad("y_bad", 3, 5);
  s = Linear<float>(ExecutionContext<Space>(), ConstMatrix<float, Space>(x), ConstMatrix<float, Space>(w_ok), y_bad);
  EXPECT_NE(std::string(s.message()).find("y_bad"), std::string::npos) << s;
}

}  // namespace
}  // namespace openmoe::kernels
