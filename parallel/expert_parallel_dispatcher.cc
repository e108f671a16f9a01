#include "parallel/expert_parallel_dispatcher.h"

#include <string>
#include <utility>
#include <vector>

#include <Kokkos_Core.hpp>

#include "absl/strings/str_cat.h"
#include "kernels/backward.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"
#include "kernels/moe.h"
#include "openmoe/core/status_macros.h"

namespace openmoe::parallel {
namespace {

// out viewed as [cols, rows, block] = in viewed as [rows, cols, block] with the block grid
// transposed: out[c][r][:] = in[r][c][:]. (A free function: CUDA lambdas cannot live in private
// members.)
template <class T, class ExecSpace>
void TransposeBlocks(const ExecSpace& space, const T* in, T* out, int64_t rows, int64_t cols, int64_t block) {
  Kokkos::parallel_for(
      "openmoe::parallel::TransposeBlocks", kernels::FlatRange(space, rows * cols * block),
      KOKKOS_LAMBDA(const int64_t i) {
        const int64_t b = i % block, rc = i / block, c = rc % cols, r = rc / cols;
        out[(c * rows + r) * block + b] = in[i];
      });
}

// Blocks of `block` elements: out block (r, c) = in block (r, c) for r < rows, c < cols, block (r, c)
// being block number r * in_row + c * in_col of `in` and r * out_row + c * out_col of `out`.
template <class T, class ExecSpace>
void CopyBlocks(const ExecSpace& space, const T* in, int64_t in_row, int64_t in_col, T* out, int64_t out_row,
                int64_t out_col, int64_t rows, int64_t cols, int64_t block) {
  Kokkos::parallel_for(
      "openmoe::parallel::CopyBlocks", kernels::FlatRange(space, rows * cols * block), KOKKOS_LAMBDA(const int64_t i) {
        const int64_t b = i % block, rc = i / block, c = rc % cols, r = rc / cols;
        out[(r * out_row + c * out_col) * block + b] = in[(r * in_row + c * in_col) * block + b];
      });
}

}  // namespace

template <class ExecSpace>
absl::StatusOr<std::shared_ptr<ExpertParallelDispatcher<ExecSpace>>> ExpertParallelDispatcher<ExecSpace>::Create(
    std::shared_ptr<comm::Communicator<ExecSpace>> comm, int64_t num_experts, int64_t overlap_chunks) {
  if (comm == nullptr) return absl::InvalidArgumentError("ExpertParallelDispatcher: no communicator");
  if (num_experts <= 0 || num_experts % comm->size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("expert parallelism: ", num_experts,
                                                   " experts cannot be split evenly over ", comm->size(), " ranks"));
  }
  if (overlap_chunks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert parallelism: the overlap chunks must be at least 1, not ", overlap_chunks));
  }
  return std::shared_ptr<ExpertParallelDispatcher>(
      new ExpertParallelDispatcher(std::move(comm), num_experts, overlap_chunks));
}

template <class ExecSpace>
absl::Status ExpertParallelDispatcher<ExecSpace>::CheckOwnedRows(const char* op, int64_t rows, int64_t capacity) const {
  const int64_t want = local_ * comm_->size() * capacity;
  if (rows != want) {
    return absl::InvalidArgumentError(absl::StrCat("ExpertParallelDispatcher::", op, ": the local experts' buffer has ",
                                                   rows, " rows, expected ", local_, " experts x ", comm_->size(),
                                                   " ranks x capacity ", capacity, " = ", want));
  }
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status ExpertParallelDispatcher<ExecSpace>::CheckSameCapacity(const ExecSpace& space, int64_t capacity) {
  // Equal counts need one capacity on every rank (every rank's own routing group of B x S tokens).
  Kokkos::View<int64_t*, typename ExecSpace::memory_space> c("ep.capacity", 2);
  auto h = Kokkos::create_mirror_view(c);
  h(0) = capacity, h(1) = -capacity;
  Kokkos::deep_copy(space, c, h);
  OPENMOE_RETURN_IF_ERROR(comm_->AllReduce(space, c, comm::ReduceOp::kMax));
  Kokkos::deep_copy(space, h, c);
  space.fence();
  if (h(0) != capacity || -h(1) != capacity) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expert parallelism: the ranks' routing capacities differ (from ", -h(1), " to ", h(0),
        "); every rank needs the same tokens per step (batch size x sequence length)"));
  }
  return absl::OkStatus();
}

template <class ExecSpace>
template <class T>
absl::Status ExpertParallelDispatcher<ExecSpace>::ToOwners(const ExecSpace& space, ConstMatrix<T, ExecSpace> mine,
                                                           int64_t capacity, Matrix<T, ExecSpace> owned) {
  const int64_t P = comm_->size(), H = mine.extent(1);
  // recv[p] = rank p's rows for my experts: [P, E/P, C, H]. Equal counts: E/P * C * H per peer.
  Matrix<T, ExecSpace> recv(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ep.recv")), experts_ * capacity, H);
  OPENMOE_RETURN_IF_ERROR(comm_->AllToAll(space, mine, recv));
  TransposeBlocks<T>(space, recv.data(), owned.data(), P, local_, capacity * H);  // -> [E/P, P, C, H]
  return absl::OkStatus();
}

template <class ExecSpace>
template <class T>
absl::Status ExpertParallelDispatcher<ExecSpace>::FromOwners(const ExecSpace& space, ConstMatrix<T, ExecSpace> owned,
                                                             int64_t capacity, Matrix<T, ExecSpace> mine) {
  const int64_t P = comm_->size(), H = owned.extent(1);
  Matrix<T, ExecSpace> send(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ep.send")), experts_ * capacity, H);
  TransposeBlocks<T>(space, owned.data(), send.data(), local_, P, capacity * H);  // [E/P, P] -> [P, E/P] blocks
  // mine[q] = owner q's outputs for my tokens: [P, E/P, C, H] = [E * C, H] in global expert order.
  return comm_->AllToAll(space, send, mine);
}

template <class ExecSpace>
template <class T>
absl::Status ExpertParallelDispatcher<ExecSpace>::DispatchT(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,
                                                            ConstMatrix<int32_t, ExecSpace> experts,
                                                            ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                                                            Matrix<T, ExecSpace> dispatched) {
  OPENMOE_RETURN_IF_ERROR(CheckOwnedRows("Dispatch", int64_t(dispatched.extent(0)), capacity));
  OPENMOE_RETURN_IF_ERROR(CheckSameCapacity(space, capacity));
  const int64_t H = x.extent(1);
  Matrix<T, ExecSpace> mine(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ep.mine")), experts_ * capacity, H);
  OPENMOE_RETURN_IF_ERROR(kernels::Dispatch<T>(space, x, experts, rank, capacity, mine));  // empty slots 0
  return ToOwners<T>(space, mine, capacity, dispatched);
}

template <class ExecSpace>
template <class T>
absl::Status ExpertParallelDispatcher<ExecSpace>::CombineT(const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out,
                                                           ConstMatrix<float, ExecSpace> probs,
                                                           ConstMatrix<int32_t, ExecSpace> experts,
                                                           ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                                                           Matrix<T, ExecSpace> y) {
  OPENMOE_RETURN_IF_ERROR(CheckOwnedRows("Combine", int64_t(expert_out.extent(0)), capacity));
  Matrix<T, ExecSpace> mine(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ep.mine_out")),
                            experts_ * capacity, expert_out.extent(1));
  OPENMOE_RETURN_IF_ERROR(FromOwners<T>(space, expert_out, capacity, mine));
  return kernels::Combine<T>(space, mine, probs, experts, rank, capacity, y);
}

#define OPENMOE_EP_DISPATCH_(T)                                                                                     \
  template <class ExecSpace>                                                                                        \
  absl::Status ExpertParallelDispatcher<ExecSpace>::Dispatch(                                                       \
      const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<int32_t, ExecSpace> experts,                 \
      ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity, Matrix<T, ExecSpace> dispatched) {                    \
    return DispatchT<T>(space, x, experts, rank, capacity, dispatched);                                             \
  }                                                                                                                 \
  template <class ExecSpace>                                                                                        \
  absl::Status ExpertParallelDispatcher<ExecSpace>::Combine(                                                        \
      const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out, ConstMatrix<float, ExecSpace> probs,            \
      ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,              \
      Matrix<T, ExecSpace> y) {                                                                                     \
    return CombineT<T>(space, expert_out, probs, experts, rank, capacity, y);                                       \
  }
OPENMOE_EP_DISPATCH_(float)
OPENMOE_EP_DISPATCH_(bf16)
OPENMOE_EP_DISPATCH_(f16)
#undef OPENMOE_EP_DISPATCH_

template <class ExecSpace>
absl::Status ExpertParallelDispatcher<ExecSpace>::CombineBackward(
    const ExecSpace& space, ConstMatrix<float, ExecSpace> dy, ConstMatrix<float, ExecSpace> expert_out,
    ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
    int64_t capacity, Matrix<float, ExecSpace> d_expert_out, Matrix<float, ExecSpace> dprobs) {
  OPENMOE_RETURN_IF_ERROR(CheckOwnedRows("CombineBackward", int64_t(expert_out.extent(0)), capacity));
  OPENMOE_RETURN_IF_ERROR(CheckOwnedRows("CombineBackward", int64_t(d_expert_out.extent(0)), capacity));
  const int64_t H = expert_out.extent(1);
  // The experts' outputs for my tokens again (dprobs needs them): what Combine received.
  Matrix<float, ExecSpace> out_mine(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ep.out_mine")),
                                    experts_ * capacity, H);
  OPENMOE_RETURN_IF_ERROR(FromOwners<float>(space, expert_out, capacity, out_mine));
  Matrix<float, ExecSpace> d_mine(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ep.d_out_mine")),
                                  experts_ * capacity, H);  // CombineBackward writes every row
  OPENMOE_RETURN_IF_ERROR(kernels::CombineBackward<ExecSpace>(space, dy, out_mine, probs, experts, rank, capacity,
                                                              d_mine, dprobs));
  // d_out of my tokens' rows to the experts' owners: the mirror of Combine's exchange.
  return ToOwners<float>(space, d_mine, capacity, d_expert_out);
}

template <class ExecSpace>
absl::Status ExpertParallelDispatcher<ExecSpace>::DispatchBackward(const ExecSpace& space,
                                                                   ConstMatrix<float, ExecSpace> d_dispatched,
                                                                   ConstMatrix<int32_t, ExecSpace> experts,
                                                                   ConstMatrix<int32_t, ExecSpace> rank,
                                                                   int64_t capacity, Matrix<float, ExecSpace> dx) {
  OPENMOE_RETURN_IF_ERROR(CheckOwnedRows("DispatchBackward", int64_t(d_dispatched.extent(0)), capacity));
  // The gradients of my tokens' dispatched rows back from the owners: the mirror of Dispatch's exchange.
  Matrix<float, ExecSpace> d_mine(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("ep.d_disp_mine")),
                                  experts_ * capacity, d_dispatched.extent(1));
  OPENMOE_RETURN_IF_ERROR(FromOwners<float>(space, d_dispatched, capacity, d_mine));
  return kernels::DispatchBackward<ExecSpace>(space, d_mine, experts, rank, capacity, dx);
}

template <class ExecSpace>
template <class T>
absl::Status ExpertParallelDispatcher<ExecSpace>::ExchangeAroundExperts(const ExecSpace& space,
                                                                        ConstMatrix<T, ExecSpace> mine,
                                                                        int64_t capacity, Matrix<T, ExecSpace> owned_in,
                                                                        const ExpertRange& run,
                                                                        ConstMatrix<T, ExecSpace> owned_out,
                                                                        Matrix<T, ExecSpace> mine_out) {
  const int64_t P = comm_->size(), H = mine.extent(1), CH = capacity * H, K = chunks_;
  auto first = [&](int64_t j) { return j * local_ / K; };  // chunk j: local experts [first(j), first(j + 1))
  // Staging of the all-to-alls, chunk j at element P * first(j) * CH: [P, chunk experts, C, H] each.
  // Allocated before anything is enqueued and freed after the last use (on CUDA a free waits for the device).
  auto staging = [&](const char* label) {
    return Matrix<T, ExecSpace>(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label)), experts_ * capacity, H);
  };
  Matrix<T, ExecSpace> to_send = staging("ep.overlap.to_send"), to_recv = staging("ep.overlap.to_recv");
  Matrix<T, ExecSpace> back_send = staging("ep.overlap.back_send"), back_recv = staging("ep.overlap.back_recv");
  auto chunk_of = [&](const Matrix<T, ExecSpace>& buffer, int64_t j) {  // [P * chunk experts * C, H] rows
    return Kokkos::subview(buffer, std::make_pair(P * first(j) * capacity, P * first(j + 1) * capacity), Kokkos::ALL);
  };
  OPENMOE_ASSIGN_OR_RETURN(const ExecSpace comm_space, comm_stream_.For(space));
  StreamEvent<ExecSpace> mine_ready;
  std::vector<StreamEvent<ExecSpace>> rows_ready(K), outputs_ready(K);
  StreamEvent<ExecSpace> all_back;
  OPENMOE_RETURN_IF_ERROR(mine_ready.Record(space));
  OPENMOE_RETURN_IF_ERROR(mine_ready.Wait(comm_space));
  // Every chunk's rows to the owners, in chunk order on the communication stream.
  for (int64_t j = 0; j < K; ++j) {
    const int64_t e0 = first(j), n = first(j + 1) - e0;
    auto send = chunk_of(to_send, j), recv = chunk_of(to_recv, j);
    // send[p][e] = mine[p][e0 + e]: [P, n, C, H]
    CopyBlocks<T>(comm_space, mine.data() + e0 * CH, local_, 1, send.data(), n, 1, P, n, CH);
    OPENMOE_RETURN_IF_ERROR(comm_->AllToAll(comm_space, send, recv));  // recv[p][e] = rank p's rows for my e0 + e
    // owned_in[e0 + e][p] = recv[p][e]: [n, P, C, H] rows of the chunk's experts
    CopyBlocks<T>(comm_space, recv.data(), n, 1, owned_in.data() + e0 * P * CH, 1, P, P, n, CH);
    OPENMOE_RETURN_IF_ERROR(rows_ready[j].Record(comm_space));
  }
  // Per chunk: its experts once its rows arrived, then their outputs back while the next chunk computes.
  for (int64_t j = 0; j < K; ++j) {
    const int64_t e0 = first(j), e1 = first(j + 1), n = e1 - e0;
    OPENMOE_RETURN_IF_ERROR(rows_ready[j].Wait(space));
    OPENMOE_RETURN_IF_ERROR(run(e0, e1));
    OPENMOE_RETURN_IF_ERROR(outputs_ready[j].Record(space));
    OPENMOE_RETURN_IF_ERROR(outputs_ready[j].Wait(comm_space));
    auto send = chunk_of(back_send, j), recv = chunk_of(back_recv, j);
    // send[p][e] = owned_out[e0 + e][p]: [P, n, C, H]
    CopyBlocks<T>(comm_space, owned_out.data() + e0 * P * CH, 1, P, send.data(), n, 1, P, n, CH);
    OPENMOE_RETURN_IF_ERROR(comm_->AllToAll(comm_space, send, recv));  // recv[q][e] = owner q's expert e0 + e, my rows
    // mine_out[q][e0 + e] = recv[q][e]: the blocks of the chunk's experts in [P, E/P, C, H]
    CopyBlocks<T>(comm_space, recv.data(), n, 1, mine_out.data() + e0 * CH, local_, 1, P, n, CH);
  }
  OPENMOE_RETURN_IF_ERROR(all_back.Record(comm_space));
  OPENMOE_RETURN_IF_ERROR(all_back.Wait(space));
  // The staging buffers are freed when this returns: wait for the exchanges that use them.
  comm_space.fence();
  return absl::OkStatus();
}

template <class ExecSpace>
template <class T>
absl::Status ExpertParallelDispatcher<ExecSpace>::RunExpertBlockT(
    const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<float, ExecSpace> probs,
    ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
    Matrix<T, ExecSpace> dispatched, Matrix<T, ExecSpace> expert_out, const ExpertRange& run_experts,
    Matrix<T, ExecSpace> y) {
  if (chunks_ <= 1) {
    return this->template ExpertBlockInOrder<T>(space, x, probs, experts, rank, capacity, dispatched, expert_out,
                                                run_experts, y);
  }
  OPENMOE_RETURN_IF_ERROR(CheckOwnedRows("RunExpertBlock", int64_t(dispatched.extent(0)), capacity));
  OPENMOE_RETURN_IF_ERROR(CheckOwnedRows("RunExpertBlock", int64_t(expert_out.extent(0)), capacity));
  OPENMOE_RETURN_IF_ERROR(CheckSameCapacity(space, capacity));
  const int64_t H = x.extent(1);
  auto by_owner = [&](const char* label) {  // [P, E/P, C, H] = [E * C, H]
    return Matrix<T, ExecSpace>(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label)), experts_ * capacity, H);
  };
  Matrix<T, ExecSpace> mine = by_owner("ep.mine"), mine_out = by_owner("ep.mine_out");
  OPENMOE_RETURN_IF_ERROR(kernels::Dispatch<T>(space, x, experts, rank, capacity, mine));  // empty slots 0
  OPENMOE_RETURN_IF_ERROR(ExchangeAroundExperts<T>(space, mine, capacity, dispatched, run_experts, expert_out, mine_out));
  return kernels::Combine<T>(space, mine_out, probs, experts, rank, capacity, y);
}

#define OPENMOE_EP_EXPERT_BLOCK_(T)                                                                                 \
  template <class ExecSpace>                                                                                        \
  absl::Status ExpertParallelDispatcher<ExecSpace>::RunExpertBlock(                                                 \
      const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<float, ExecSpace> probs,                     \
      ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,              \
      Matrix<T, ExecSpace> dispatched, Matrix<T, ExecSpace> expert_out, const ExpertRange& run_experts,             \
      Matrix<T, ExecSpace> y) {                                                                                     \
    return RunExpertBlockT<T>(space, x, probs, experts, rank, capacity, dispatched, expert_out, run_experts, y);    \
  }
OPENMOE_EP_EXPERT_BLOCK_(float)
OPENMOE_EP_EXPERT_BLOCK_(bf16)
OPENMOE_EP_EXPERT_BLOCK_(f16)
#undef OPENMOE_EP_EXPERT_BLOCK_

template <class ExecSpace>
absl::Status ExpertParallelDispatcher<ExecSpace>::RunExpertBlockBackward(
    const ExecSpace& space, ConstMatrix<float, ExecSpace> dy, ConstMatrix<float, ExecSpace> expert_out,
    ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
    int64_t capacity, Matrix<float, ExecSpace> d_expert_out, Matrix<float, ExecSpace> dprobs,
    Matrix<float, ExecSpace> d_dispatched, const ExpertRange& run_experts_backward, Matrix<float, ExecSpace> dx) {
  if (chunks_ <= 1) {
    return this->ExpertBlockBackwardInOrder(space, dy, expert_out, probs, experts, rank, capacity, d_expert_out,
                                            dprobs, d_dispatched, run_experts_backward, dx);
  }
  for (const int64_t rows : {int64_t(expert_out.extent(0)), int64_t(d_expert_out.extent(0)),
                             int64_t(d_dispatched.extent(0))}) {
    OPENMOE_RETURN_IF_ERROR(CheckOwnedRows("RunExpertBlockBackward", rows, capacity));
  }
  const int64_t H = expert_out.extent(1);
  auto by_owner = [&](const char* label) {  // [P, E/P, C, H] = [E * C, H]
    return Matrix<float, ExecSpace>(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label)),
                                    experts_ * capacity, H);
  };
  // The experts' outputs for my tokens again (dprobs needs them; whole: CombineBackward reads every row).
  Matrix<float, ExecSpace> out_mine = by_owner("ep.out_mine"), d_mine = by_owner("ep.d_out_mine");
  Matrix<float, ExecSpace> d_back = by_owner("ep.d_disp_mine");
  OPENMOE_RETURN_IF_ERROR(FromOwners<float>(space, expert_out, capacity, out_mine));
  OPENMOE_RETURN_IF_ERROR(kernels::CombineBackward<ExecSpace>(space, dy, out_mine, probs, experts, rank, capacity,
                                                              d_mine, dprobs));
  // d_out to the owners, the experts' backward, d_dispatched back: chunk by chunk.
  OPENMOE_RETURN_IF_ERROR(ExchangeAroundExperts<float>(space, d_mine, capacity, d_expert_out, run_experts_backward,
                                                       d_dispatched, d_back));
  return kernels::DispatchBackward<ExecSpace>(space, d_back, experts, rank, capacity, dx);
}

#define OPENMOE_INSTANTIATE_EP_DISPATCHER(Space) template class ExpertParallelDispatcher<Space>;
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_EP_DISPATCHER)

}  // namespace openmoe::parallel
