// File: parallel/mpi_communicator_test.cc
// MpiCommunicator on every host backend, run by mpi_test.sh alone (a world of one) and under
// `mpirun -np 2` and `-np 4`: the conformance suite every Communicator passes, then what MPI adds
// (sub-groups, the 16-bit reductions, calls split into pieces, MPI errors as Status) and the
// session. Each rank checks its own results; mpi_test_main.cc makes one failing rank fail all.
#include "parallel/mpi_communicator.h"

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/comm/communicator_conformance.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/tensor_types.h"
#include "openmoe/core/test_util.h"
#include "parallel/mpi_runtime.h"

namespace openmoe::parallel {
namespace {

template <class Space>
struct MpiWorldFactory {
  using ExecSpace = Space;
  static std::unique_ptr<comm::Communicator<Space>> Make() {
    auto world = MpiCommunicator<Space>::World();
    EXPECT_TRUE(world.ok()) << world.status();
    return world.ok() ? std::move(*world) : nullptr;
  }
};

template <class List>
struct Factories;
template <class... Spaces>
struct Factories<ExecutionSpaceList<Spaces...>> {
  using type = ::testing::Types<MpiWorldFactory<Spaces>...>;
};

using MpiSpaces = openmoe::testing::ToGTestTypes<MpiExecutionSpaces>::type;

}  // namespace
}  // namespace openmoe::parallel

namespace openmoe::comm::conformance {  // gtest wants the suite's unqualified name
INSTANTIATE_TYPED_TEST_SUITE_P(Mpi, CommunicatorConformanceTest,
                               openmoe::parallel::Factories<openmoe::parallel::MpiExecutionSpaces>::type);
}  // namespace openmoe::comm::conformance

// Prints the status (the MPI call, the rank and MPI's words) when it fails.
#define ASSERT_OK(expr)                                       \
  do {                                                        \
    const absl::Status assert_ok_status_ = (expr);            \
    ASSERT_TRUE(assert_ok_status_.ok()) << assert_ok_status_; \
  } while (false)

namespace openmoe::parallel {
namespace {

using comm::ReduceOp;

template <class Space>
class MpiCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto world = MpiCommunicator<Space>::World();
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

  std::unique_ptr<MpiCommunicator<Space>> world_;
  Space space_;
  int P_ = 0, r_ = 0;
  static constexpr int64_t kN = 111;
};
TYPED_TEST_SUITE(MpiCommunicatorTest, MpiSpaces);

// Even and odd world ranks form two groups (one when P = 1); each reduces and gathers within its
// own group only, and the world still works after them.
TYPED_TEST(MpiCommunicatorTest, EvenAndOddGroupsReduceWithinTheirGroup) {
  using Space = TypeParam;
  const int P = this->P_, r = this->r_, parity = r % 2;
  auto group = this->world_->Split(/*color=*/parity, /*key=*/r);
  static_assert(std::is_same<decltype(group), absl::StatusOr<std::unique_ptr<MpiCommunicator<Space>>>>::value,
                "MpiCommunicator::Split gives the concrete type");
  ASSERT_TRUE(group.ok()) << group.status();
  const int members = (P - parity + 1) / 2;  // ranks parity, parity + 2, ... < P
  ASSERT_EQ((*group)->size(), members);
  ASSERT_EQ((*group)->rank(), r / 2);

  auto x = this->Device(std::vector<float>(this->kN, float(r)), "x");  // [n], this world rank
  ASSERT_OK((*group)->AllReduce(this->space_, x));
  const float want = float(members * parity + members * (members - 1));  // sum of parity + 2k
  for (float v : this->Host(x)) ASSERT_EQ(v, want);

  Vector<int32_t, Space> mine("mine", 1), all("all", members);  // [1], [members]
  Kokkos::deep_copy(mine, r);
  ASSERT_OK((*group)->AllGather(this->space_, mine, all));
  const auto got = this->Host(all);
  for (int k = 0; k < members; ++k) ASSERT_EQ(got[k], parity + 2 * k) << k;

  // Key -r reverses the order; a split of the group is a communicator too.
  auto reversed = this->world_->Split(parity, -r);
  ASSERT_TRUE(reversed.ok()) << reversed.status();
  EXPECT_EQ((*reversed)->rank(), members - 1 - r / 2);
  auto halves = (*group)->Split(/*color=*/0, /*key=*/0);
  ASSERT_TRUE(halves.ok()) << halves.status();
  EXPECT_EQ((*halves)->size(), members);

  auto ones = this->Device(std::vector<int64_t>(3, 1), "ones");  // [3]
  ASSERT_OK(this->world_->AllReduce(this->space_, ones));
  EXPECT_EQ(this->Host(ones), std::vector<int64_t>(3, P));
}

// bf16 / f16 reduce through our own MPI_Ops: summed as floats (an integer sum of the bits, or a
// max over them as unsigned integers, gives other numbers; negative values catch the latter).
TYPED_TEST(MpiCommunicatorTest, SixteenBitFloatsSumAndMaxAsFloats) {
  const int64_t n = this->kN;
  const int P = this->P_, r = this->r_;
  auto check = [&](auto zero) {
    using T = decltype(zero);
    std::vector<T> mine(n);  // [n]: -(r + 1) * (i % 5 + 1) / 4, exact in both types
    for (int64_t i = 0; i < n; ++i) mine[i] = T(-float((r + 1) * (i % 5 + 1)) / 4.0f);
    auto send = this->Device(mine, "send");
    Vector<T, TypeParam> sum("sum", n), max("max", n);  // [n]
    ASSERT_OK(this->world_->AllReduce(this->space_, send, sum));
    ASSERT_OK(this->world_->AllReduce(this->space_, send, max, ReduceOp::kMax));
    ASSERT_OK(this->world_->AllReduce(this->space_, send, ReduceOp::kSum));  // in place
    const auto got_sum = this->Host(sum), got_max = this->Host(max), got_in_place = this->Host(send);
    for (int64_t i = 0; i < n; ++i) {
      const float unit = float(i % 5 + 1) / 4.0f;
      ASSERT_EQ(float(got_sum[i]), -unit * float(P * (P + 1) / 2)) << sizeof(T) << " " << i;
      ASSERT_EQ(float(got_in_place[i]), float(got_sum[i])) << i;
      ASSERT_EQ(float(got_max[i]), -unit) << i;  // rank 0's
    }
    // ReduceScatter: send [P, n] of ones; this rank's [n] chunk sums to P.
    auto ones = this->Device(std::vector<T>(P * n, T(1.0f)), "ones");
    Vector<T, TypeParam> chunk("chunk", n);  // [n]
    ASSERT_OK(this->world_->ReduceScatter(this->space_, ones, chunk));
    for (T v : this->Host(chunk)) ASSERT_EQ(float(v), float(P));
  };
  check(bf16(0.0f));
  check(f16(0.0f));
}

// The rounding of each pairwise step, seen directly on the MPI_Op functions (no communicator):
// 256 + 1 is not a bf16 (8 significant bits), and rounds to even, 256.
TEST(MpiReduceFunctions, RoundEachStepAndMaxKeepsBits) {
  std::vector<bf16> in = {bf16(1.0f), bf16(3.0f), bf16(-2.0f)}, inout = {bf16(256.0f), bf16(256.0f), bf16(-1.0f)};
  int len = 3;
  MPI_Datatype type = MPI_UINT16_T;
  Bf16SumFunction(in.data(), inout.data(), &len, &type);
  EXPECT_EQ(float(inout[0]), 256.0f);  // 257 -> 256 (even)
  EXPECT_EQ(float(inout[1]), 260.0f);  // 259 -> 260
  EXPECT_EQ(float(inout[2]), -3.0f);
  std::vector<f16> a = {f16(-1.0f), f16(0.5f)}, b = {f16(-2.0f), f16(-0.25f)};
  len = 2;
  F16MaxFunction(a.data(), b.data(), &len, &type);
  EXPECT_EQ(float(b[0]), -1.0f);
  EXPECT_EQ(float(b[1]), 0.5f);
}

// With a limit of 7 elements per MPI call, 111-element AllReduce, Broadcast and Send / Recv run
// as 16 calls each and give what one call gives; the [P, n] ops refuse instead of truncating.
TYPED_TEST(MpiCommunicatorTest, LongBuffersRunAsSeveralCalls) {
  using Space = TypeParam;
  const int64_t n = this->kN;
  const int P = this->P_, r = this->r_;
  this->world_->set_max_elements_per_call_for_testing(7);
  std::vector<float> mine(n);  // [n]: i + r
  for (int64_t i = 0; i < n; ++i) mine[i] = float(i + r);
  auto x = this->Device(mine, "x");
  Vector<float, Space> sum("sum", n);  // [n]
  ASSERT_OK(this->world_->AllReduce(this->space_, x, sum));
  ASSERT_OK(this->world_->AllReduce(this->space_, x));  // in place
  const auto got_sum = this->Host(sum), got_in_place = this->Host(x);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(got_sum[i], float(P * i + P * (P - 1) / 2)) << i;
    ASSERT_EQ(got_in_place[i], got_sum[i]) << i;
  }

  auto data = this->Device(mine, "data");  // root P - 1 sends i + P - 1
  ASSERT_OK(this->world_->Broadcast(this->space_, data, P - 1));
  const auto got = this->Host(data);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], float(i + P - 1)) << i;

  if ((r ^ 1) < P) {  // pairs (0, 1), (2, 3)
    auto out = this->Device(mine, "out");
    Vector<float, Space> in("in", n);  // [n]
    const int partner = r ^ 1;
    if (r % 2 == 0) {
      ASSERT_OK(this->world_->Send(this->space_, out, partner));
      ASSERT_OK(this->world_->Recv(this->space_, in, partner));
    } else {
      ASSERT_OK(this->world_->Recv(this->space_, in, partner));
      ASSERT_OK(this->world_->Send(this->space_, out, partner));
    }
    const auto theirs = this->Host(in);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(theirs[i], float(i + partner)) << i;
  }

  Vector<float, Space> big("big", P * n), chunk("chunk", n);  // [P, n], [n]
  const absl::Status refused = this->world_->ReduceScatter(this->space_, big, chunk);
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnimplemented) << refused;
  EXPECT_NE(std::string(refused.message()).find("ReduceScatter: 111 elements per rank"), std::string::npos)
      << refused;
  EXPECT_EQ(this->world_->AllGather(this->space_, chunk, big).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(this->world_->AllToAll(this->space_, big, Vector<float, Space>("big2", P * n)).code(),
            absl::StatusCode::kUnimplemented);
}

// The communicator's MPI_Comm returns errors (MPI_ERRORS_RETURN) instead of aborting, and
// MpiResult names the call and this process's world rank.
TYPED_TEST(MpiCommunicatorTest, MpiErrorsComeBackAsStatus) {
  float x = 0.0f;
  const int code = MPI_Send(&x, 1, MPI_FLOAT, /*dest=*/this->P_ + 5, 0, this->world_->mpi_comm());
  ASSERT_NE(code, MPI_SUCCESS);
  const absl::Status status = MpiResult(code, "MPI_Send");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  int world_rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  const std::string message(status.message());
  EXPECT_NE(message.find("MPI_Send failed on rank " + std::to_string(world_rank) + ": "), std::string::npos)
      << message;
  EXPECT_NE(message.find("MPI_ERR_RANK"), std::string::npos) << message;
  EXPECT_TRUE(MpiResult(MPI_SUCCESS, "MPI_Send").ok());
}

TEST(MpiSessionTest, RanksMatchMpiAndASecondSessionLeavesMpiRunning) {
  int mpi_rank = -1, mpi_size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &mpi_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &mpi_size);
  int argc = 0;
  char** argv = nullptr;
  {
    auto session = MpiSession::Create(&argc, &argv);  // MPI is active already (the test main's)
    ASSERT_TRUE(session.ok()) << session.status();
    EXPECT_FALSE((*session)->initialised_mpi());
    EXPECT_EQ((*session)->world_rank(), mpi_rank);
    EXPECT_EQ((*session)->world_size(), mpi_size);
    const int local_rank = (*session)->local_rank(), local_size = (*session)->local_size();
    EXPECT_GE(local_rank, 0);
    EXPECT_LT(local_rank, local_size);
    EXPECT_LE(local_size, mpi_size);
    // One node here: the local ranks are 0 .. P - 1, each once.
    std::vector<int> all(mpi_size, -1);
    ASSERT_EQ(MPI_Allgather(&local_rank, 1, MPI_INT, all.data(), 1, MPI_INT, MPI_COMM_WORLD), MPI_SUCCESS);
    std::vector<int> seen(mpi_size, 0);
    for (int l : all) {
      ASSERT_GE(l, 0);
      ASSERT_LT(l, mpi_size);
      ++seen[l];
    }
    EXPECT_EQ(seen, std::vector<int>(mpi_size, 1));
  }
  EXPECT_TRUE(MpiIsActive());  // the second session did not finalise
  EXPECT_EQ(WorldRankOrMinusOne(), mpi_rank);
}

// Without mpirun's OMPI_COMM_WORLD_LOCAL_* (another launcher), the session splits the world by
// shared memory and finds the same node-local ranks. Every rank unsets them: the split is collective.
TEST(MpiSessionTest, LocalRankBySharedMemorySplitMatchesMpirunsVariables) {
  int argc = 0;
  char** argv = nullptr;
  auto from_env = MpiSession::Create(&argc, &argv);
  ASSERT_TRUE(from_env.ok()) << from_env.status();
  const char* names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"};
  std::string saved[2];
  bool had[2];
  for (int i = 0; i < 2; ++i) {
    const char* v = std::getenv(names[i]);
    had[i] = v != nullptr;
    if (had[i]) saved[i] = v;
    unsetenv(names[i]);
  }
  auto from_split = MpiSession::Create(&argc, &argv);
  for (int i = 0; i < 2; ++i)
    if (had[i]) setenv(names[i], saved[i].c_str(), /*overwrite=*/1);
  ASSERT_TRUE(from_split.ok()) << from_split.status();
  EXPECT_EQ((*from_split)->local_rank(), (*from_env)->local_rank());
  EXPECT_EQ((*from_split)->local_size(), (*from_env)->local_size());
}

}  // namespace
}  // namespace openmoe::parallel
