// File: openmoe/comm/communicator_conformance.h
// The test body every Communicator passes, written for any size P and rank r (each rank checks
// its own results). An implementation's test instantiates it over factories, one per backend:
//
//   template <class Space> struct MyFactory {
//     using ExecSpace = Space;
//     static std::unique_ptr<Communicator<Space>> Make();  // the communicator under test
//   };
//   namespace openmoe::comm::conformance {  // gtest wants the suite's unqualified name
//   INSTANTIATE_TYPED_TEST_SUITE_P(Mine, CommunicatorConformanceTest,
//                                  ::testing::Types<MyFactory<Kokkos::Serial>, ...>);
//   }
//
// Values are small integers (exact in every dtype) that encode (source rank, destination, index),
// so a misplaced or skipped element shows up. Send / Recv pair even ranks with the odd rank above.
#ifndef OPENMOE_COMM_COMMUNICATOR_CONFORMANCE_H_
#define OPENMOE_COMM_COMMUNICATOR_CONFORMANCE_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include <Kokkos_Core.hpp>

#include "gtest/gtest.h"
#include "openmoe/comm/communicator.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/tensor_types.h"
#include "openmoe/core/test_util.h"

namespace openmoe::comm::conformance {

template <class T>
std::vector<uint64_t> Bits(const std::vector<T>& v) {  // compares bf16 / f16 by their bits too
  std::vector<uint64_t> bits(v.size(), 0);
  for (size_t i = 0; i < v.size(); ++i) std::memcpy(&bits[i], &v[i], sizeof(T));
  return bits;
}

// Fills x[i] = base + i on `space` (a kernel, so the op after it must be ordered on `space`).
template <class Space, class T>
void IotaOn(const Space& space, Vector<T, Space> x, int64_t base) {
  Kokkos::parallel_for(
      "openmoe::comm::test::Iota", Kokkos::RangePolicy<Space>(space, 0, x.extent(0)),
      KOKKOS_LAMBDA(const int64_t i) { x(i) = T(float(base + i)); });
}

inline void ExpectInvalid(const absl::Status& s, std::initializer_list<const char*> words) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  for (const char* w : words) EXPECT_NE(std::string(s.message()).find(w), std::string::npos) << w << " in " << s;
}

template <class Factory>
class CommunicatorConformanceTest : public ::testing::Test {
 protected:
  using Space = typename Factory::ExecSpace;
  void SetUp() override {
    comm_ = Factory::Make();
    ASSERT_NE(comm_, nullptr);
    P_ = comm_->size();
    r_ = comm_->rank();
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

  // AllToAll of T: send [P, n], the same on every rank, so recv (p, i) = send (r, i), bit for bit.
  // int64 values use all 8 bytes; bf16 / f16 ones stay exact (< 256).
  template <class T>
  void ExpectAllToAllMovesEveryByte() {
    const int64_t n = kN, P = P_;
    std::vector<T> mine(P * n);  // [P, n]
    for (int64_t k = 0; k < P * n; ++k) {
      if constexpr (std::is_integral<T>::value) {
        mine[k] = T(std::is_same<T, int64_t>::value ? (int64_t(1) << 40) + k : k);
      } else {
        mine[k] = T(float(k % 251));
      }
    }
    auto send = Device(mine, "send");
    Vector<T, Space> recv("recv", P * n);  // [P, n]
    ASSERT_TRUE(comm_->AllToAll(space_, send, recv).ok());
    const auto got = Bits(Host(recv)), want = Bits(mine);
    for (int64_t p = 0; p < P; ++p)
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(got[p * n + i], want[r_ * n + i]) << sizeof(T) << "-byte T at " << p << ", " << i;
  }

  std::unique_ptr<Communicator<Space>> comm_;
  Space space_;
  int P_ = 0, r_ = 0;
  static constexpr int64_t kN = 111;  // elements per rank / per peer
};

TYPED_TEST_SUITE_P(CommunicatorConformanceTest);

TYPED_TEST_P(CommunicatorConformanceTest, RankAndSize) {
  EXPECT_GE(this->P_, 1);
  EXPECT_GE(this->r_, 0);
  EXPECT_LT(this->r_, this->P_);
}

TYPED_TEST_P(CommunicatorConformanceTest, AllReduceSumMaxInPlaceAndOut) {
  using Space = typename TestFixture::Space;
  const int64_t n = this->kN, P = this->P_, r = this->r_;
  std::vector<float> mine(n);  // rank r: [n], i + r
  for (int64_t i = 0; i < n; ++i) mine[i] = float(i + r);
  auto send = this->Device(mine, "send");
  Vector<float, Space> sum("sum", n), max("max", n);  // [n]
  ASSERT_TRUE(this->comm_->AllReduce(this->space_, send, sum).ok());
  ASSERT_TRUE(this->comm_->AllReduce(this->space_, send, max, ReduceOp::kMax).ok());
  ASSERT_TRUE(this->comm_->AllReduce(this->space_, send).ok());  // in place
  const auto got_sum = this->Host(sum), got_max = this->Host(max), got_in_place = this->Host(send);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(got_sum[i], float(P * i + P * (P - 1) / 2)) << i;
    ASSERT_EQ(got_max[i], float(i + P - 1)) << i;
    ASSERT_EQ(got_in_place[i], got_sum[i]) << i;
  }
  // An overflow flag raised on the last rank only reaches every rank through kMax.
  auto flag = this->Device(std::vector<int32_t>{r == P - 1 ? 1 : 0}, "flag");
  ASSERT_TRUE(this->comm_->AllReduce(this->space_, flag, ReduceOp::kMax).ok());
  EXPECT_EQ(this->Host(flag)[0], 1);
}

TYPED_TEST_P(CommunicatorConformanceTest, ReduceScatterSumsThisRanksChunk) {
  using Space = typename TestFixture::Space;
  const int64_t n = this->kN, P = this->P_, r = this->r_;
  std::vector<float> mine(P * n);  // [P, n]: element (p, i) = p * n + i + r
  for (int64_t k = 0; k < P * n; ++k) mine[k] = float(k + r);
  auto send = this->Device(mine, "send");
  Vector<float, Space> recv("recv", n);  // [n]
  ASSERT_TRUE(this->comm_->ReduceScatter(this->space_, send, recv).ok());
  const auto got = this->Host(recv);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], float(P * (r * n + i) + P * (P - 1) / 2)) << i;
}

TYPED_TEST_P(CommunicatorConformanceTest, AllGatherConcatenatesInRankOrder) {
  using Space = typename TestFixture::Space;
  const int64_t n = this->kN, P = this->P_, r = this->r_;
  Vector<float, Space> send("send", n), recv("recv", P * n);  // [n], [P, n]
  IotaOn(this->space_, send, 1000 * r);
  ASSERT_TRUE(this->comm_->AllGather(this->space_, send, recv).ok());
  const auto got = this->Host(recv);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[p * n + i], float(1000 * p + i)) << p << ", " << i;
}

TYPED_TEST_P(CommunicatorConformanceTest, AllToAllTransposesChunks) {
  using Space = typename TestFixture::Space;
  const int64_t n = this->kN, P = this->P_, r = this->r_;
  // send (p, i) = (r * P + p) * n + i: from r to p; after it, recv (p, i) came from p to r.
  Vector<float, Space> send("send", P * n), recv("recv", P * n);  // [P, n] each
  IotaOn(this->space_, send, r * P * n);  // filled on space_, right before the op
  ASSERT_TRUE(this->comm_->AllToAll(this->space_, send, recv).ok());
  const auto got = this->Host(recv);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[p * n + i], float((p * P + r) * n + i)) << p << ", " << i;
}

TYPED_TEST_P(CommunicatorConformanceTest, AllToAllEveryDType) {
  this->template ExpectAllToAllMovesEveryByte<bf16>();
  this->template ExpectAllToAllMovesEveryByte<f16>();
  this->template ExpectAllToAllMovesEveryByte<int32_t>();
  this->template ExpectAllToAllMovesEveryByte<int64_t>();
}

TYPED_TEST_P(CommunicatorConformanceTest, BroadcastFromEveryRoot) {
  using Space = typename TestFixture::Space;
  const int64_t n = this->kN, P = this->P_, r = this->r_;
  for (int root = 0; root < P; ++root) {
    Vector<float, Space> data("data", n), out("out", n);  // [n]
    IotaOn(this->space_, data, r == root ? 7 * root : -1000);
    ASSERT_TRUE(this->comm_->Broadcast(this->space_, ConstBuffer(data.data(), n, DType::kFloat32),
                                       Buffer{out.data(), n, DType::kFloat32}, root).ok());
    ASSERT_TRUE(this->comm_->Broadcast(this->space_, data, root).ok());  // in place
    const auto got = this->Host(data), got_out = this->Host(out);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(got[i], float(7 * root + i)) << "root " << root << " i " << i;
      ASSERT_EQ(got_out[i], got[i]) << "root " << root << " i " << i;
    }
  }
}

TYPED_TEST_P(CommunicatorConformanceTest, SendRecvPairsAndRejectsSelf) {
  using Space = typename TestFixture::Space;
  const int64_t n = this->kN;
  const int P = this->P_, r = this->r_;
  Vector<float, Space> buf("buf", n);  // [n]
  ExpectInvalid(this->comm_->Send(this->space_, buf, r), {"Send", "peer"});
  ExpectInvalid(this->comm_->Recv(this->space_, buf, r), {"Recv", "peer"});
  ExpectInvalid(this->comm_->Send(this->space_, buf, P), {"Send", "peer"});
  ExpectInvalid(this->comm_->Recv(this->space_, buf, -1), {"Recv", "peer"});
  const int partner = r ^ 1;
  if (partner >= P) return;
  Vector<float, Space> mine("mine", n), theirs("theirs", n);  // [n]
  IotaOn(this->space_, mine, 1000 * r);
  if (r % 2 == 0) {
    ASSERT_TRUE(this->comm_->Send(this->space_, mine, partner).ok());
    ASSERT_TRUE(this->comm_->Recv(this->space_, theirs, partner).ok());
  } else {
    ASSERT_TRUE(this->comm_->Recv(this->space_, theirs, partner).ok());
    ASSERT_TRUE(this->comm_->Send(this->space_, mine, partner).ok());
  }
  const auto got = this->Host(theirs);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], float(1000 * partner + i)) << i;
}

TYPED_TEST_P(CommunicatorConformanceTest, BarrierAndEmptyBuffers) {
  using Space = typename TestFixture::Space;
  EXPECT_TRUE(this->comm_->Barrier(this->space_).ok());
  Vector<float, Space> empty("empty", 0);
  EXPECT_TRUE(this->comm_->AllReduce(this->space_, empty).ok());
  EXPECT_TRUE(this->comm_->AllGather(this->space_, empty, empty).ok());
  EXPECT_TRUE(this->comm_->AllToAll(this->space_, empty, empty).ok());
}

TYPED_TEST_P(CommunicatorConformanceTest, SplitFormsGroups) {
  const int P = this->P_, r = this->r_;
  auto all = this->comm_->Split(/*color=*/0, /*key=*/r);  // everyone, same order
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ((*all)->size(), P);
  EXPECT_EQ((*all)->rank(), r);
  auto alone = this->comm_->Split(/*color=*/r, /*key=*/0);  // one group per rank
  ASSERT_TRUE(alone.ok()) << alone.status();
  EXPECT_EQ((*alone)->size(), 1);
  EXPECT_EQ((*alone)->rank(), 0);
  Vector<float, typename TestFixture::Space> send("send", this->kN), recv("recv", this->kN);  // [1, n]
  IotaOn(this->space_, send, 5);
  ASSERT_TRUE((*alone)->AllToAll(this->space_, send, recv).ok());
  EXPECT_EQ(this->Host(recv), this->Host(send));
  ExpectInvalid(this->comm_->Split(-1, 0).status(), {"Split", "color", "-1"});
}

TYPED_TEST_P(CommunicatorConformanceTest, RejectsBadSizesNamingOpAndCounts) {
  using Space = typename TestFixture::Space;
  const int64_t n = this->kN, P = this->P_;
  const std::string Pn = std::to_string(P * n), Pn1 = std::to_string(P * n + 1);
  const std::string n0 = std::to_string(n), n1 = std::to_string(n + 1);
  auto& c = *this->comm_;
  const Space& s = this->space_;
  Vector<float, Space> a("a", n), b("b", n + 1), big("big", P * n), big1("big1", P * n + 1);
  Vector<int32_t, Space> ints("ints", P * n);
  ExpectInvalid(c.AllReduce(s, a, b), {"AllReduce", n0.c_str(), n1.c_str()});
  ExpectInvalid(c.ReduceScatter(s, big1, a), {"ReduceScatter", Pn1.c_str(), n0.c_str()});
  ExpectInvalid(c.AllGather(s, a, big1), {"AllGather", n0.c_str(), Pn1.c_str()});
  ExpectInvalid(c.AllToAll(s, big, big1), {"AllToAll", Pn.c_str(), Pn1.c_str()});
  ExpectInvalid(c.AllToAll(s, big, ints), {"AllToAll", "float32", "int32"});
  ExpectInvalid(c.AllToAll(s, big, big), {"AllToAll", "overlap"});
  ExpectInvalid(c.Broadcast(s, ConstBuffer(a.data(), n, DType::kFloat32), Buffer{b.data(), n + 1, DType::kFloat32}, 0),
                {"Broadcast", n0.c_str(), n1.c_str()});
  ExpectInvalid(c.Broadcast(s, a, int(P)), {"Broadcast", "root"});
  ExpectInvalid(c.AllReduce(s, ConstBuffer(nullptr, 3, DType::kFloat32), Buffer{a.data(), 3, DType::kFloat32},
                            ReduceOp::kSum),
                {"AllReduce", "no data"});
  Kokkos::View<float**, Kokkos::LayoutRight, typename Space::memory_space> m("strided_m", n, 2);  // [n, 2]
  auto column = Kokkos::subview(m, Kokkos::ALL, 0);  // strided
  ExpectInvalid(c.AllReduce(s, column), {"AllReduce", "not contiguous", "strided_m"});
}

REGISTER_TYPED_TEST_SUITE_P(CommunicatorConformanceTest, RankAndSize, AllReduceSumMaxInPlaceAndOut,
                            ReduceScatterSumsThisRanksChunk, AllGatherConcatenatesInRankOrder,
                            AllToAllTransposesChunks, AllToAllEveryDType, BroadcastFromEveryRoot,
                            SendRecvPairsAndRejectsSelf, BarrierAndEmptyBuffers, SplitFormsGroups,
                            RejectsBadSizesNamingOpAndCounts);

}  // namespace openmoe::comm::conformance

#endif  // OPENMOE_COMM_COMMUNICATOR_CONFORMANCE_H_
