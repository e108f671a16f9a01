// ExpertParallelDispatcher's overlap pipeline (--comm_overlap) on MPI host ranks (mpi_test.sh runs it
// alone, under mpirun -np 2 and -np 4): RunExpertBlock / RunExpertBlockBackward with the local experts
// in K = 2, 3, 5 chunks give the same bits as K = 1 (one exchange each way) for every buffer the model
// sees (dispatched, expert outputs, y; d_expert_out, dprobs, d_dispatched, dx), the callback covers
// the local experts in min(K, E/P) consecutive ranges, and the forward equals a host reference. The
// routing leaves expert (r mod E) without tokens from rank r (with P = 1: without any), and every
// expert with more assignments than its capacity drops some.
#include "parallel/expert_parallel_dispatcher.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/tensor_types.h"
#include "openmoe/core/test_util.h"
#include "parallel/mpi_communicator.h"

namespace openmoe::parallel {
namespace {

#define ASSERT_OK(expr)                                       \
  do {                                                        \
    const absl::Status assert_ok_status_ = (expr);            \
    ASSERT_TRUE(assert_ok_status_.ok()) << assert_ok_status_; \
  } while (false)

using MpiSpaces = openmoe::testing::ToGTestTypes<MpiExecutionSpaces>::type;

constexpr int64_t kLocal = 3, kN = 7, kH = 5, kC = 2;  // local experts, tokens, width, capacity

// One rank's routing: experts [N, 2], slots rank [N, 2] (each expert's queue: its top-1 assignments in
// token order, then its top-2), probs [N, E]. Expert (r mod E) gets no token of rank r.
struct Routing {
  std::vector<int32_t> experts, slots;
  std::vector<float> probs;
};
Routing RouteOf(int r, int64_t E) {
  Routing route{std::vector<int32_t>(kN * 2), std::vector<int32_t>(kN * 2), std::vector<float>(kN * E)};
  const int64_t skip = r % E;
  auto pick = [&](int64_t i) { return int32_t((skip + 1 + i % (E - 1)) % E); };  // never `skip`
  for (int64_t t = 0; t < kN; ++t) {
    route.experts[2 * t] = pick(t * 2 + r);
    int32_t second = pick(t * 5 + 1 + r);
    if (second == route.experts[2 * t]) second = pick(t * 5 + 2 + r);
    route.experts[2 * t + 1] = second;
    for (int64_t e = 0; e < E; ++e) route.probs[t * E + e] = 0.05f + 0.01f * float((t * 7 + e * 3 + r) % 11);
  }
  std::vector<int32_t> queue(E, 0);
  for (int k = 0; k < 2; ++k) {
    for (int64_t t = 0; t < kN; ++t) route.slots[2 * t + k] = queue[route.experts[2 * t + k]]++;
  }
  return route;
}

// The fake experts: row-wise, different per global expert g (a function of each row alone, as the
// real expert products are).
template <class T>
T ExpertOf(T x, int64_t g, int64_t h) {
  return T(float(x) * (1.0f + 0.5f * float(g)) + 0.25f * float(h));
}
float ExpertBackwardOf(float d, int64_t g, int64_t h) { return d * (2.0f + float(g)) - 0.125f * float(h); }

template <class T, class Space>
Matrix<T, Space> Filled(int64_t rows, int64_t cols, int seed) {  // deterministic, exact in bf16
  Matrix<T, Space> m("m", rows, cols);
  for (int64_t i = 0; i < rows * cols; ++i) m.data()[i] = T(float((i * 37 + seed * 11) % 23 - 11) / 8.0f);
  return m;
}

template <class View>
std::vector<unsigned char> Bytes(const View& v) {
  std::vector<unsigned char> bytes(v.size() * sizeof(typename View::value_type));
  std::memcpy(bytes.data(), v.data(), bytes.size());
  return bytes;
}

template <class Space>
class ExpertParallelDispatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto world = MpiCommunicator<Space>::World();
    ASSERT_TRUE(world.ok()) << world.status();
    comm_ = std::shared_ptr<comm::Communicator<Space>>(std::move(*world));
    P_ = comm_->size(), r_ = comm_->rank(), E_ = kLocal * P_;
    route_ = RouteOf(r_, E_);
    experts_ = openmoe::testing::ToDevice<Space>(route_.experts, kN, 2, "experts");
    slots_ = openmoe::testing::ToDevice<Space>(route_.slots, kN, 2, "rank");
    probs_ = openmoe::testing::ToDevice<Space>(route_.probs, kN, E_, "probs");
  }
  std::shared_ptr<ExpertParallelDispatcher<Space>> Make(int64_t chunks) {
    auto made = ExpertParallelDispatcher<Space>::Create(comm_, E_, chunks);
    EXPECT_TRUE(made.ok()) << made.status();
    return made.ok() ? *made : nullptr;
  }

  // Everything the model sees from one forward and one backward of the expert block, as bytes.
  struct Run {
    std::vector<std::vector<unsigned char>> buffers;
    std::vector<std::pair<int64_t, int64_t>> forward_ranges, backward_ranges;
    std::vector<float> y;  // the forward's output as floats (for the reference check)
  };
  template <class T>
  Run RunBlock(ExpertParallelDispatcher<Space>& d) {
    Run run;
    const int64_t R = d.rows_per_expert(kC), first_expert = d.first_local_expert();
    Matrix<T, Space> x = Filled<T, Space>(kN, kH, r_ + 1), dispatched("dispatched", kLocal * R, kH);
    Matrix<T, Space> out("out", kLocal * R, kH), y("y", kN, kH);
    const Space space;
    auto forward = [&](int64_t first, int64_t end) -> absl::Status {
      run.forward_ranges.push_back({first, end});
      space.fence();
      for (int64_t i = first * R; i < end * R; ++i) {
        for (int64_t h = 0; h < kH; ++h) out(i, h) = ExpertOf(dispatched(i, h), first_expert + i / R, h);
      }
      return absl::OkStatus();
    };
    EXPECT_TRUE(d.RunExpertBlock(space, ConstMatrix<T, Space>(x), probs_, experts_, slots_, kC, dispatched, out,
                                 forward, y).ok());
    space.fence();
    run.buffers = {Bytes(dispatched), Bytes(out), Bytes(y)};
    for (int64_t i = 0; i < kN * kH; ++i) run.y.push_back(float(y.data()[i]));
    if constexpr (std::is_same_v<T, float>) {
      Matrix<float, Space> dy = Filled<float, Space>(kN, kH, r_ + 7), d_out("d_out", kLocal * R, kH);
      Matrix<float, Space> dprobs("dprobs", kN, E_), d_disp("d_disp", kLocal * R, kH), dx("dx", kN, kH);
      auto backward = [&](int64_t first, int64_t end) -> absl::Status {
        run.backward_ranges.push_back({first, end});
        space.fence();
        for (int64_t i = first * R; i < end * R; ++i) {
          for (int64_t h = 0; h < kH; ++h) d_disp(i, h) = ExpertBackwardOf(d_out(i, h), first_expert + i / R, h);
        }
        return absl::OkStatus();
      };
      EXPECT_TRUE(d.RunExpertBlockBackward(space, ConstMatrix<float, Space>(dy), ConstMatrix<float, Space>(out), probs_,
                                           experts_, slots_, kC, d_out, dprobs, d_disp, backward, dx).ok());
      space.fence();
      for (auto* m : {&d_out, &dprobs, &d_disp, &dx}) run.buffers.push_back(Bytes(*m));
    }
    return run;
  }

  // y[t] = sum over kept k of probs(t, e_k) * ExpertOf(x[t], e_k) on the host.
  template <class T>
  void ExpectReference(const std::vector<float>& y) {
    Matrix<T, Space> x = Filled<T, Space>(kN, kH, r_ + 1);
    for (int64_t t = 0; t < kN; ++t) {
      for (int64_t h = 0; h < kH; ++h) {
        float want = 0.0f;
        for (int k = 0; k < 2; ++k) {
          const int64_t e = route_.experts[2 * t + k];
          if (route_.slots[2 * t + k] >= kC) continue;  // dropped
          want += route_.probs[t * E_ + e] * float(ExpertOf(x(t, h), e, h));
        }
        EXPECT_NEAR(y[t * kH + h], want, 0.02f * (1.0f + std::fabs(want))) << "token " << t << " column " << h;
      }
    }
  }

  template <class T>
  void ExpectChunksGiveTheSameBits() {
    auto one = Make(1);
    ASSERT_NE(one, nullptr);
    ASSERT_EQ(one->overlap_chunks(), 1);
    const Run base = RunBlock<T>(*one);
    ASSERT_EQ(base.forward_ranges, (std::vector<std::pair<int64_t, int64_t>>{{0, kLocal}}));
    ExpectReference<T>(base.y);
    const std::vector<std::vector<std::pair<int64_t, int64_t>>> want_ranges = {
        {{0, 1}, {1, 3}}, {{0, 1}, {1, 2}}, {{0, 1}, {1, 2}, {2, 3}}};
    for (const int64_t chunks : {2, 3, 5}) {
      SCOPED_TRACE(::testing::Message() << chunks << " chunks requested, " << P_ << " ranks");
      auto d = Make(chunks);
      ASSERT_NE(d, nullptr);
      EXPECT_EQ(d->overlap_chunks(), std::min<int64_t>(chunks, kLocal));
      const Run run = RunBlock<T>(*d);
      const auto& want = chunks == 2 ? want_ranges[0] : want_ranges[2];
      EXPECT_EQ(run.forward_ranges, want);
      if (std::is_same_v<T, float>) {
        EXPECT_EQ(run.backward_ranges, want);
      }
      ASSERT_EQ(run.buffers.size(), base.buffers.size());
      const char* names[] = {"dispatched", "expert_out", "y", "d_expert_out", "dprobs", "d_dispatched", "dx"};
      for (size_t b = 0; b < base.buffers.size(); ++b) {
        EXPECT_TRUE(run.buffers[b] == base.buffers[b]) << names[b] << " differs from one exchange's";
      }
    }
  }

  std::shared_ptr<comm::Communicator<Space>> comm_;
  int P_ = 0, r_ = 0;
  int64_t E_ = 0;
  Routing route_;
  Matrix<int32_t, Space> experts_, slots_;
  Matrix<float, Space> probs_;
};
TYPED_TEST_SUITE(ExpertParallelDispatcherTest, MpiSpaces);

TYPED_TEST(ExpertParallelDispatcherTest, ChunkedFloatForwardAndBackwardAreBitIdentical) {
  this->template ExpectChunksGiveTheSameBits<float>();
}

TYPED_TEST(ExpertParallelDispatcherTest, ChunkedBf16ForwardIsBitIdentical) {
  this->template ExpectChunksGiveTheSameBits<bf16>();
}

TYPED_TEST(ExpertParallelDispatcherTest, ZeroChunksAreRefused) {
  auto made = ExpertParallelDispatcher<TypeParam>::Create(this->comm_, this->E_, 0);
  ASSERT_FALSE(made.ok());
  EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(made.status().message().find("overlap chunks"), std::string::npos) << made.status();
}

}  // namespace
}  // namespace openmoe::parallel
