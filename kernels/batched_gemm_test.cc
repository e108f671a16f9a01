// StridedBatchedGemm on every backend against a double loop over the same (rounded) operands:
// every transpose combination, padded leading dimensions, batch strides with gaps, beta 0 and 1,
// float -> float, bf16 -> float and bf16 -> bf16.
#include "kernels/batched_gemm.h"

#include <cfloat>
#include <cmath>
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
class BatchedGemmTest : public ::testing::Test {};
TYPED_TEST_SUITE(BatchedGemmTest, openmoe::testing::Backends);

template <class Space, class TIn, class TOut>
void Check(bool trans_a, bool trans_b, float beta) {
  BatchedGemmShape s;
  s.trans_a = trans_a, s.trans_b = trans_b, s.m = 5, s.n = 7, s.k = 9, s.batch = 3, s.beta = beta;
  const int64_t a_rows = trans_a ? s.k : s.m, a_cols = trans_a ? s.m : s.k;  // column-major extents
  const int64_t b_rows = trans_b ? s.n : s.k, b_cols = trans_b ? s.k : s.n;
  s.lda = a_rows + 2, s.ldb = b_rows + 1, s.ldc = s.m + 3;  // padded columns
  s.stride_a = s.lda * a_cols + 4, s.stride_b = s.ldb * b_cols + 5, s.stride_c = s.ldc * s.n + 6;  // gaps
  std::vector<float> a = RandomNormal(s.stride_a * s.batch, 1.0f, 11), b = RandomNormal(s.stride_b * s.batch, 1.0f, 12);
  std::vector<float> c = RandomNormal(s.stride_c * s.batch, 1.0f, 13);
  std::vector<TIn> a_in, b_in;
  std::vector<TOut> c_in;
  for (float& e : a) a_in.push_back(FromFloat<TIn>(e)), e = ToFloat(a_in.back());
  for (float& e : b) b_in.push_back(FromFloat<TIn>(e)), e = ToFloat(b_in.back());
  for (float& e : c) c_in.push_back(FromFloat<TOut>(e)), e = ToFloat(c_in.back());
  auto ad = ToDevice<Space, TIn>(a_in, 1, a_in.size(), "a"), bd = ToDevice<Space, TIn>(b_in, 1, b_in.size(), "b");
  auto cd = ToDevice<Space, TOut>(c_in, 1, c_in.size(), "c");
  const absl::Status status = StridedBatchedGemm<TIn, TOut, Space>(ExecutionContext<Space>(), s, ad.data(), bd.data(), cd.data());
  ASSERT_TRUE(status.ok()) << status;
  const std::vector<TOut> got = ToHost(cd);
  for (int64_t batch = 0; batch < s.batch; ++batch) {
    const float* A = a.data() + batch * s.stride_a;
    const float* B = b.data() + batch * s.stride_b;
    const float* C = c.data() + batch * s.stride_c;
    for (int64_t i = 0; i < s.m; ++i)
      for (int64_t j = 0; j < s.n; ++j) {
        double want = beta * C[i + j * s.ldc], abs_sum = std::fabs(want);
        for (int64_t l = 0; l < s.k; ++l) {
          const double x = trans_a ? A[l + i * s.lda] : A[i + l * s.lda];
          const double y = trans_b ? B[j + l * s.ldb] : B[l + j * s.ldb];
          want += x * y, abs_sum += std::fabs(x * y);
        }
        // float32 sums of k + 1 terms; a 16-bit output adds its rounding (2^-8 relative).
        const double bound = (s.k + 2) * FLT_EPSILON * abs_sum + (std::is_same_v<TOut, float> ? 0.0 : std::ldexp(std::fabs(want), -8));
        ASSERT_NEAR(ToFloat(got[batch * s.stride_c + i + j * s.ldc]), want, bound)
            << "batch " << batch << " (" << i << ", " << j << ") trans " << trans_a << trans_b << " beta " << beta;
      }
    for (int64_t g = s.ldc * s.n; g < s.stride_c; ++g) {  // the gap between batches is untouched
      ASSERT_EQ(ToFloat(got[batch * s.stride_c + g]), C[g]) << "gap " << g;
    }
  }
}

TYPED_TEST(BatchedGemmTest, MatchesDoubleLoopForEveryTransposeAndType) {
  for (bool trans_a : {false, true})
    for (bool trans_b : {false, true})
      for (float beta : {0.0f, 1.0f}) {
        Check<TypeParam, float, float>(trans_a, trans_b, beta);
        Check<TypeParam, bf16, float>(trans_a, trans_b, beta);
        Check<TypeParam, bf16, bf16>(trans_a, trans_b, beta);
      }
}

}  // namespace
}  // namespace openmoe::kernels
