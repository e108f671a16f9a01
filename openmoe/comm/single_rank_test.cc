// SingleRankCommunicator on every enabled backend: the conformance suite every communicator
// passes (communicator_conformance.h), plus what only a single rank guarantees.
#include "openmoe/comm/single_rank.h"

#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/comm/communicator_conformance.h"
#include "openmoe/core/execution_spaces.h"
#include "openmoe/core/test_util.h"

namespace openmoe::comm {
namespace {

template <class Space>
struct SingleRankFactory {
  using ExecSpace = Space;
  static std::unique_ptr<Communicator<Space>> Make() { return std::make_unique<SingleRankCommunicator<Space>>(); }
};

template <class List>
struct Factories;
template <class... Spaces>
struct Factories<ExecutionSpaceList<Spaces...>> {
  using type = ::testing::Types<SingleRankFactory<Spaces>...>;
};

}  // namespace

namespace conformance {  // gtest wants the suite's unqualified name
INSTANTIATE_TYPED_TEST_SUITE_P(SingleRank, CommunicatorConformanceTest, Factories<EnabledExecutionSpaces>::type);
}  // namespace conformance

namespace {

template <class Space>
class SingleRankTest : public ::testing::Test {};
TYPED_TEST_SUITE(SingleRankTest, openmoe::testing::Backends);

TYPED_TEST(SingleRankTest, IsRankZeroOfOneAndSplitsIntoItself) {
  SingleRankCommunicator<TypeParam> comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  auto sub = comm.Split(/*color=*/3, /*key=*/-7);
  ASSERT_TRUE(sub.ok()) << sub.status();
  EXPECT_EQ((*sub)->rank(), 0);
  EXPECT_EQ((*sub)->size(), 1);
}

// Size 1: a reduce-scatter of n elements gives n, an all-gather of n gives n.
TYPED_TEST(SingleRankTest, ScatterAndGatherKeepTheCount) {
  using Space = TypeParam;
  SingleRankCommunicator<Space> comm;
  const std::vector<float> host = openmoe::testing::RandomNormal(19 * 111, 1.0f, /*seed=*/41);
  auto x = openmoe::testing::ToDevice<Space>(host, 19, 111);  // [19, 111]
  Matrix<float, Space> scattered("scattered", 19, 111), gathered("gathered", 19, 111);
  Space space;
  ASSERT_TRUE(comm.ReduceScatter(space, x, scattered).ok());
  ASSERT_TRUE(comm.AllGather(space, scattered, gathered).ok());
  space.fence();
  EXPECT_EQ(openmoe::testing::ToHost(gathered), host);
}

}  // namespace
}  // namespace openmoe::comm
