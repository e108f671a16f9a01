#include "parallel/expert_parallel_dispatcher.h"

#include <string>

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

}  // namespace

template <class ExecSpace>
absl::StatusOr<std::shared_ptr<ExpertParallelDispatcher<ExecSpace>>> ExpertParallelDispatcher<ExecSpace>::Create(
    std::shared_ptr<comm::Communicator<ExecSpace>> comm, int64_t num_experts) {
  if (comm == nullptr) return absl::InvalidArgumentError("ExpertParallelDispatcher: no communicator");
  if (num_experts <= 0 || num_experts % comm->size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("expert parallelism: ", num_experts,
                                                   " experts cannot be split evenly over ", comm->size(), " ranks"));
  }
  return std::shared_ptr<ExpertParallelDispatcher>(new ExpertParallelDispatcher(std::move(comm), num_experts));
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
  {  // Equal counts need one capacity on every rank (every rank's own routing group of B x S tokens).
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
  }
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

#define OPENMOE_INSTANTIATE_EP_DISPATCHER(Space) template class ExpertParallelDispatcher<Space>;
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_EP_DISPATCHER)

}  // namespace openmoe::parallel
