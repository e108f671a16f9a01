// Checks that the Kokkos the build links is the one it claims: the backends of this build are
// enabled and initialised, and Kokkos Kernels' BLAS (cuBLAS TPL on CUDA) computes a float GEMM
// that agrees with a naive triple loop, on every enabled backend.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <KokkosBlas3_gemm.hpp>
#include <Kokkos_Core.hpp>

#include "gtest/gtest.h"
#include "openmoe/core/test_util.h"

namespace openmoe {
namespace {

TEST(KokkosToolchain, BuildHasItsBackends) {
#if defined(KOKKOS_ENABLE_CUDA)
  EXPECT_STREQ(Kokkos::DefaultExecutionSpace::name(), "Cuda");
  const cudaDeviceProp& prop = Kokkos::Cuda().cuda_device_prop();
  std::printf("CUDA device %s, cc %d.%d\n", prop.name, prop.major, prop.minor);
  EXPECT_GE(prop.major, 9) << "this build targets sm_90 (H100/H200)";
#else
  EXPECT_STREQ(Kokkos::DefaultExecutionSpace::name(), "OpenMP");
  EXPECT_GE(Kokkos::OpenMP().concurrency(), 1);
#endif
  EXPECT_EQ(KOKKOS_VERSION, 30401);
}

template <class ExecSpace>
class KokkosKernelsGemm : public ::testing::Test {};
TYPED_TEST_SUITE(KokkosKernelsGemm, testing::Backends);

// C[m, n] = A[m, k] @ B[k, n] through KokkosBlas::gemm (LayoutLeft: the ETI'd layout).
TYPED_TEST(KokkosKernelsGemm, MatchesNaiveLoop) {
  using Space  = TypeParam;
  using Matrix = Kokkos::View<float**, Kokkos::LayoutLeft, Space>;  // runs on Space
  const int m = 19, k = 111, n = 37;
  const uint32_t seed = 7;
  std::printf("seed %u, backend %s\n", seed, Space::name());
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  Matrix a("a", m, k), b("b", k, n), c("c", m, n);
  auto a_host = Kokkos::create_mirror_view(a);
  auto b_host = Kokkos::create_mirror_view(b);
  for (int i = 0; i < m; ++i)
    for (int p = 0; p < k; ++p) a_host(i, p) = uniform(rng);
  for (int p = 0; p < k; ++p)
    for (int j = 0; j < n; ++j) b_host(p, j) = uniform(rng);
  Kokkos::deep_copy(a, a_host);
  Kokkos::deep_copy(b, b_host);
  KokkosBlas::gemm("N", "N", 1.0f, a, b, 0.0f, c);  // 3.4.1 takes the space from the View
  auto c_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), c);
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double expected = 0.0;
      for (int p = 0; p < k; ++p) expected += double(a_host(i, p)) * double(b_host(p, j));
      // Worst-case float32 dot-product error: k * eps32 * sum_p |a_ip b_pj| <= k * eps32 * k.
      ASSERT_NEAR(c_host(i, j), expected, double(k) * k * 1.2e-7)
          << "at (" << i << ", " << j << ") on " << Space::name();
    }
  }
}

}  // namespace
}  // namespace openmoe
