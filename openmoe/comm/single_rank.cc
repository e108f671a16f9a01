// File: openmoe/comm/single_rank.cc
#include "openmoe/comm/single_rank.h"

#include <cstdint>

#include <Kokkos_Core.hpp>

#include "absl/strings/str_cat.h"

namespace openmoe::comm {
namespace {

template <class ExecSpace>
using Bytes = Kokkos::View<char*, Kokkos::LayoutRight, typename ExecSpace::memory_space,
                           Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

// recv = send, enqueued on `space` (validated: same dtype and count, same or disjoint buffers).
template <class ExecSpace>
absl::Status Copy(const ExecSpace& space, ConstBuffer send, Buffer recv) {
  if (send.data == recv.data || send.count == 0) return absl::OkStatus();
  const int64_t bytes = send.count * DTypeBytes(send.dtype);
  Kokkos::deep_copy(space, Bytes<ExecSpace>(static_cast<char*>(recv.data), bytes),
                    Bytes<ExecSpace>(const_cast<char*>(static_cast<const char*>(send.data)), bytes));
  return absl::OkStatus();
}

}  // namespace

template <class ExecSpace>
absl::Status SingleRankCommunicator<ExecSpace>::DoAllReduce(const ExecSpace& space, ConstBuffer send,
                                                            Buffer recv, ReduceOp) {
  return Copy(space, send, recv);
}

template <class ExecSpace>
absl::Status SingleRankCommunicator<ExecSpace>::DoReduceScatter(const ExecSpace& space, ConstBuffer send,
                                                                Buffer recv, ReduceOp) {
  return Copy(space, send, recv);
}

template <class ExecSpace>
absl::Status SingleRankCommunicator<ExecSpace>::DoAllGather(const ExecSpace& space, ConstBuffer send,
                                                            Buffer recv) {
  return Copy(space, send, recv);
}

template <class ExecSpace>
absl::Status SingleRankCommunicator<ExecSpace>::DoAllToAll(const ExecSpace& space, ConstBuffer send,
                                                           Buffer recv) {
  return Copy(space, send, recv);
}

// Unreachable through Communicator's checks (the only rank is oneself); kept explicit.
template <class ExecSpace>
absl::Status SingleRankCommunicator<ExecSpace>::DoSend(const ExecSpace&, ConstBuffer, int peer) {
  return absl::InvalidArgumentError(absl::StrCat("Send: single-rank communicator has no peer ", peer));
}

template <class ExecSpace>
absl::Status SingleRankCommunicator<ExecSpace>::DoRecv(const ExecSpace&, Buffer, int peer) {
  return absl::InvalidArgumentError(absl::StrCat("Recv: single-rank communicator has no peer ", peer));
}

template <class ExecSpace>
absl::Status SingleRankCommunicator<ExecSpace>::DoBroadcast(const ExecSpace& space, ConstBuffer send,
                                                            Buffer recv, int) {
  return Copy(space, send, recv);
}

template <class ExecSpace>
absl::Status SingleRankCommunicator<ExecSpace>::DoBarrier(const ExecSpace&) {
  return absl::OkStatus();
}

template <class ExecSpace>
absl::StatusOr<std::unique_ptr<Communicator<ExecSpace>>> SingleRankCommunicator<ExecSpace>::DoSplit(
    int, int) const {
  return std::unique_ptr<Communicator<ExecSpace>>(std::make_unique<SingleRankCommunicator<ExecSpace>>());
}

template class SingleRankCommunicator<Kokkos::Serial>;
#if defined(KOKKOS_ENABLE_OPENMP)
template class SingleRankCommunicator<Kokkos::OpenMP>;
#endif
#if defined(KOKKOS_ENABLE_CUDA)
template class SingleRankCommunicator<Kokkos::Cuda>;
#endif

}  // namespace openmoe::comm
