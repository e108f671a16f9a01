// File: parallel/nccl_communicator_test.cc
// NcclCommunicator on Kokkos::Cuda, one GPU per rank: the conformance suite every Communicator
// passes, then what NCCL adds (16-bit and int64 reductions, ops on a stream of their own with no
// fence, sub-groups through ncclCommSplit, errors as Status). Runs alone (a world of one, one GPU)
// or as `mpirun -np N` on N GPUs (tools/device/run_nccl.sh); cuda_mpi_test_main.cc puts rank r's
// Kokkos on GPU local_rank % GPUs and makes one failing rank fail all. CUDA builds only (tag gpu);
// a host build compiles one skipped test.
#include <Kokkos_Core.hpp>

#include "gtest/gtest.h"

#if !defined(KOKKOS_ENABLE_CUDA)

TEST(NcclCommunicatorTest, NeedsCuda) { GTEST_SKIP() << "NcclCommunicator is built for Kokkos::Cuda only"; }

#else

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "openmoe/comm/communicator_conformance.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/tensor_types.h"
#include "openmoe/core/test_util.h"
#include "parallel/mpi_runtime.h"
#include "parallel/nccl_communicator.h"

namespace openmoe::parallel {
namespace {

// A world communicator on the GPU Kokkos runs on (cuda_mpi_test_main.cc chose it).
absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclWorld() {
  return NcclCommunicator::Create(MPI_COMM_WORLD, Kokkos::Cuda().cuda_device());
}

struct NcclWorldFactory {
  using ExecSpace = Kokkos::Cuda;
  static std::unique_ptr<comm::Communicator<Kokkos::Cuda>> Make() {
    auto world = NcclWorld();
    EXPECT_TRUE(world.ok()) << world.status();
    return world.ok() ? std::move(*world) : nullptr;
  }
};

}  // namespace
}  // namespace openmoe::parallel

namespace openmoe::comm::conformance {  // gtest wants the suite's unqualified name
INSTANTIATE_TYPED_TEST_SUITE_P(Nccl, CommunicatorConformanceTest, ::testing::Types<openmoe::parallel::NcclWorldFactory>);
}  // namespace openmoe::comm::conformance

#define ASSERT_OK(expr)                                       \
  do {                                                        \
    const absl::Status assert_ok_status_ = (expr);            \
    ASSERT_TRUE(assert_ok_status_.ok()) << assert_ok_status_; \
  } while (false)

namespace openmoe::parallel {
namespace {

using comm::ReduceOp;
using Space = Kokkos::Cuda;

// Kernels at namespace scope (nvcc rejects device lambdas in gtest's private TestBody).
// x[i] = scale * (i % 7).
void FillScaledMod7(const Space& space, Vector<float, Space> x, float scale) {
  Kokkos::parallel_for("nccl_test::fill", Kokkos::RangePolicy<Space>(space, 0, x.extent(0)),
                       KOKKOS_LAMBDA(const int64_t i) { x(i) = scale * float(i % 7); });
}
// y = 2 x.
void Twice(const Space& space, Vector<float, Space> x, Vector<float, Space> y) {
  Kokkos::parallel_for("nccl_test::twice", Kokkos::RangePolicy<Space>(space, 0, x.extent(0)),
                       KOKKOS_LAMBDA(const int64_t i) { y(i) = 2.0f * x(i); });
}

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto world = NcclWorld();
    ASSERT_TRUE(world.ok()) << world.status();
    world_ = std::move(*world);
    P_ = world_->size();
    r_ = world_->rank();
  }
  template <class T>
  Vector<T, Space> Device(const std::vector<T>& host, const std::string& label) {  // [host.size()]
    Vector<T, Space> x(label, host.size());
    Kokkos::deep_copy(x, Kokkos::View<const T*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(host.data(), host.size()));
    return x;
  }
  template <class View>
  std::vector<typename View::non_const_value_type> Host(const View& x) {
    space_.fence();
    return openmoe::testing::ToHost(x);
  }

  std::unique_ptr<NcclCommunicator> world_;
  Space space_;
  int P_ = 0, r_ = 0;
  static constexpr int64_t kN = 111;
};

TEST_F(NcclCommunicatorTest, RanksMatchMpiAndTheGpuIsKokkos) {
  int mpi_rank = -1, mpi_size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &mpi_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &mpi_size);
  EXPECT_EQ(r_, mpi_rank);
  EXPECT_EQ(P_, mpi_size);
  EXPECT_EQ(world_->device(), space_.cuda_device());
  int current = -1;
  ASSERT_EQ(cudaGetDevice(&current), cudaSuccess);
  EXPECT_EQ(current, world_->device());
  EXPECT_NE(world_->nccl_comm(), nullptr);
}

// bf16 / f16 sum and max as floats (NCCL's own 16-bit reductions), int64 beyond 32 bits.
TEST_F(NcclCommunicatorTest, SixteenBitFloatsAndInt64Reduce) {
  const int64_t n = kN;
  const int P = P_, r = r_;
  auto check = [&](auto zero) {
    using T = decltype(zero);
    std::vector<T> mine(n);  // [n]: -(r + 1) * (i % 5 + 1) / 4, exact in both types
    for (int64_t i = 0; i < n; ++i) mine[i] = T(-float((r + 1) * (i % 5 + 1)) / 4.0f);
    auto send = Device(mine, "send");
    Vector<T, Space> sum("sum", n), max("max", n);  // [n]
    ASSERT_OK(world_->AllReduce(space_, send, sum));
    ASSERT_OK(world_->AllReduce(space_, send, max, ReduceOp::kMax));
    const auto got_sum = Host(sum), got_max = Host(max);
    for (int64_t i = 0; i < n; ++i) {
      const float unit = float(i % 5 + 1) / 4.0f;
      ASSERT_EQ(float(got_sum[i]), -unit * float(P * (P + 1) / 2)) << sizeof(T) << " " << i;
      ASSERT_EQ(float(got_max[i]), -unit) << i;  // rank 0's
    }
    auto ones = Device(std::vector<T>(P * n, T(1.0f)), "ones");  // [P, n]
    Vector<T, Space> chunk("chunk", n);                           // [n]
    ASSERT_OK(world_->ReduceScatter(space_, ones, chunk));
    for (T v : Host(chunk)) ASSERT_EQ(float(v), float(P));
  };
  check(bf16(0.0f));
  check(f16(0.0f));
  auto big = Device(std::vector<int64_t>(3, (int64_t(1) << 40) + r), "big");  // [3]
  ASSERT_OK(world_->AllReduce(space_, big, ReduceOp::kMax));
  EXPECT_EQ(Host(big), std::vector<int64_t>(3, (int64_t(1) << 40) + P - 1));
}

// Ops on an instance with a stream of its own are ordered on that stream: a kernel writes, the
// collective reads, a kernel reads the result, and the host fences that instance only.
TEST_F(NcclCommunicatorTest, OrderedOnTheInstancesOwnStream) {
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  {
    Space own(stream);
    ASSERT_EQ(own.cuda_stream(), stream);
    const int64_t n = int64_t(1) << 20;  // long enough for the kernels to still run when the op is enqueued
    const int P = P_, r = r_;
    Vector<float, Space> x("x", n), twice("twice", n);  // [n]
    Kokkos::deep_copy(x, 0.0f);
    Kokkos::fence();
    FillScaledMod7(own, x, float(r + 1));
    ASSERT_OK(world_->AllReduce(own, x));
    Twice(own, x, twice);
    ASSERT_OK(world_->Barrier(own));  // also waits for `own` on the host
    const auto got = openmoe::testing::ToHost(twice);
    const float ranks = float(P * (P + 1) / 2);
    for (int64_t i = 0; i < n; i += 997) ASSERT_EQ(got[i], 2.0f * ranks * float(i % 7)) << i;
  }
  cudaStreamDestroy(stream);
}

// Even and odd ranks form two groups (ncclCommSplit); each reduces and gathers within its own
// group only; key -r reverses the order; the world still works after them.
TEST_F(NcclCommunicatorTest, EvenAndOddGroupsReduceWithinTheirGroup) {
  const int P = P_, r = r_, parity = r % 2;
  auto group = world_->Split(/*color=*/parity, /*key=*/r);
  static_assert(std::is_same<decltype(group), absl::StatusOr<std::unique_ptr<NcclCommunicator>>>::value,
                "NcclCommunicator::Split gives the concrete type");
  ASSERT_TRUE(group.ok()) << group.status();
  const int members = (P - parity + 1) / 2;
  ASSERT_EQ((*group)->size(), members);
  ASSERT_EQ((*group)->rank(), r / 2);
  EXPECT_EQ((*group)->device(), world_->device());

  auto x = Device(std::vector<float>(kN, float(r)), "x");  // [n]
  ASSERT_OK((*group)->AllReduce(space_, x));
  const float want = float(members * parity + members * (members - 1));
  for (float v : Host(x)) ASSERT_EQ(v, want);

  Vector<int32_t, Space> mine("mine", 1), all("all", members);  // [1], [members]
  Kokkos::deep_copy(mine, r);
  ASSERT_OK((*group)->AllGather(space_, mine, all));
  const auto got = Host(all);
  for (int k = 0; k < members; ++k) ASSERT_EQ(got[k], parity + 2 * k) << k;

  auto reversed = world_->Split(parity, -r);
  ASSERT_TRUE(reversed.ok()) << reversed.status();
  EXPECT_EQ((*reversed)->rank(), members - 1 - r / 2);
  auto again = (*group)->Split(/*color=*/0, /*key=*/0);  // a split of a split
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->size(), members);

  auto ones = Device(std::vector<int64_t>(3, 1), "ones");  // [3]
  ASSERT_OK(world_->AllReduce(space_, ones));
  EXPECT_EQ(Host(ones), std::vector<int64_t>(3, P));
}

// Every rank asks for a GPU that does not exist: each fails alone, before ncclCommInitRank.
TEST(NcclCommunicatorCreate, RefusesAMissingGpuNamingIt) {
  auto bad = NcclCommunicator::Create(MPI_COMM_WORLD, 4096);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_NE(std::string(bad.status().message()).find("device 4096"), std::string::npos) << bad.status();
  // The device is still Kokkos' (a failed Create leaves cudaSetDevice alone or sets it back).
  int current = -1;
  ASSERT_EQ(cudaGetDevice(&current), cudaSuccess);
  EXPECT_EQ(current, Kokkos::Cuda().cuda_device());
}

TEST(NcclResult, NamesTheCallTheRankAndNcclsWords) {
  EXPECT_TRUE(NcclResult(ncclSuccess, "ncclAllReduce", 3).ok());
  const absl::Status s = NcclResult(ncclInvalidArgument, "ncclAllReduce", 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  const std::string m(s.message());
  EXPECT_NE(m.find("ncclAllReduce failed on rank 3"), std::string::npos) << m;
  EXPECT_NE(m.find(ncclGetErrorString(ncclInvalidArgument)), std::string::npos) << m;
  EXPECT_EQ(NcclResult(ncclRemoteError, "ncclSend", 0).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(NcclResult(ncclUnhandledCudaError, "ncclSend", 0).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(NcclDatatype(comm::DType::kBf16), ncclBfloat16);
  EXPECT_EQ(NcclDatatype(comm::DType::kF16), ncclFloat16);
  EXPECT_EQ(NcclDatatype(comm::DType::kInt64), ncclInt64);
  EXPECT_EQ(NcclRedOp(ReduceOp::kMax), ncclMax);
}

}  // namespace
}  // namespace openmoe::parallel

#endif  // KOKKOS_ENABLE_CUDA
