// File: parallel/mpi_communicator.cc
#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "openmoe/core/status_macros.h"
#include "parallel/mpi_runtime.h"

namespace openmoe::parallel {
namespace {

constexpr int kTag = 0;  // Send / Recv; communicators keep their messages apart, tags needn't

// The element at `offset` of a buffer of `dtype`.
void* At(void* data, int64_t offset, comm::DType dtype) {
  return static_cast<char*>(data) + offset * comm::DTypeBytes(dtype);
}
const void* At(const void* data, int64_t offset, comm::DType dtype) {
  return static_cast<const char*>(data) + offset * comm::DTypeBytes(dtype);
}

// Runs call(offset, count) over [0, n) in consecutive pieces of at most `max` elements; no call
// when n == 0 (every rank passes the same n to a collective, so all of them skip it).
template <class Call>
absl::Status InPieces(int64_t n, int64_t max, Call call) {
  for (int64_t offset = 0; offset < n; offset += max) {
    OPENMOE_RETURN_IF_ERROR(call(offset, static_cast<int>(std::min(max, n - offset))));
  }
  return absl::OkStatus();
}

}  // namespace

template <class ExecSpace>
absl::StatusOr<std::unique_ptr<MpiCommunicator<ExecSpace>>> MpiCommunicator<ExecSpace>::World() {
  if (!MpiIsActive()) {
    return absl::FailedPreconditionError("MpiCommunicator::World: MPI is not active (create an MpiSession first)");
  }
  MPI_Comm dup = MPI_COMM_NULL;
  OPENMOE_RETURN_IF_ERROR(MpiResult(MPI_Comm_dup(MPI_COMM_WORLD, &dup), "MPI_Comm_dup"));
  return Adopt(dup);
}

template <class ExecSpace>
absl::StatusOr<std::unique_ptr<MpiCommunicator<ExecSpace>>> MpiCommunicator<ExecSpace>::Adopt(MPI_Comm comm) {
  if (!MpiIsActive()) return absl::FailedPreconditionError("MpiCommunicator::Adopt: MPI is not active");
  if (comm == MPI_COMM_NULL || comm == MPI_COMM_WORLD || comm == MPI_COMM_SELF) {
    return absl::InvalidArgumentError(
        "MpiCommunicator::Adopt: needs a communicator it may free (not null, world or self: duplicate those)");
  }
  auto fail = [&comm](absl::Status status) {
    MPI_Comm_free(&comm);
    return status;
  };
  int rank = 0, size = 0;
  auto query = [&comm, &rank, &size]() -> absl::Status {
    OPENMOE_RETURN_IF_ERROR(
        MpiResult(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler"));
    OPENMOE_RETURN_IF_ERROR(MpiResult(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank"));
    return MpiResult(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  };
  if (absl::Status status = query(); !status.ok()) return fail(status);
  absl::StatusOr<MpiReduceOps> ops = MpiReduceOps::Create();
  if (!ops.ok()) return fail(ops.status());
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(comm, rank, size, std::move(*ops)));
}

template <class ExecSpace>
MpiCommunicator<ExecSpace>::~MpiCommunicator() {
  if (comm_ != MPI_COMM_NULL && MpiIsActive()) MPI_Comm_free(&comm_);
}

template <class ExecSpace>
absl::StatusOr<std::unique_ptr<MpiCommunicator<ExecSpace>>> MpiCommunicator<ExecSpace>::Split(int color,
                                                                                             int key) const {
  // The base checks the color and calls DoSplit, which always makes an MpiCommunicator.
  OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<comm::Communicator<ExecSpace>> sub,
                           comm::Communicator<ExecSpace>::Split(color, key));
  return std::unique_ptr<MpiCommunicator>(static_cast<MpiCommunicator*>(sub.release()));
}

template <class ExecSpace>
absl::StatusOr<std::unique_ptr<comm::Communicator<ExecSpace>>> MpiCommunicator<ExecSpace>::DoSplit(
    int color, int key) const {
  MPI_Comm sub = MPI_COMM_NULL;
  OPENMOE_RETURN_IF_ERROR(MpiResult(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split"));
  OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<MpiCommunicator> adopted, Adopt(sub));
  return std::unique_ptr<comm::Communicator<ExecSpace>>(std::move(adopted));
}

template <class ExecSpace>
absl::Status MpiCommunicator<ExecSpace>::CheckPerRankCount(const char* op, int64_t per_rank) const {
  if (per_rank <= max_elements_per_call_) return absl::OkStatus();
  return absl::UnimplementedError(absl::StrCat(op, ": ", per_rank, " elements per rank exceed one MPI call's ",
                                               max_elements_per_call_, "; split the call"));
}

// send, recv [n]; in place when they are one buffer.
template <class ExecSpace>
absl::Status MpiCommunicator<ExecSpace>::DoAllReduce(const ExecSpace& space, comm::ConstBuffer send,
                                                     comm::Buffer recv, comm::ReduceOp op) {
  space.fence();
  const bool in_place = send.data == recv.data;
  const MPI_Datatype type = MpiDatatype(recv.dtype);
  const MPI_Op mpi_op = ops_.Get(recv.dtype, op);
  return InPieces(recv.count, max_elements_per_call_, [&](int64_t offset, int count) {
    const void* from = in_place ? MPI_IN_PLACE : At(send.data, offset, send.dtype);
    return MpiResult(MPI_Allreduce(from, At(recv.data, offset, recv.dtype), count, type, mpi_op, comm_),
                     "MPI_Allreduce");
  });
}

// send [P, n], recv [n].
template <class ExecSpace>
absl::Status MpiCommunicator<ExecSpace>::DoReduceScatter(const ExecSpace& space, comm::ConstBuffer send,
                                                         comm::Buffer recv, comm::ReduceOp op) {
  OPENMOE_RETURN_IF_ERROR(CheckPerRankCount("ReduceScatter", recv.count));
  space.fence();
  return MpiResult(MPI_Reduce_scatter_block(send.data, recv.data, static_cast<int>(recv.count),
                                            MpiDatatype(recv.dtype), ops_.Get(recv.dtype, op), comm_),
                   "MPI_Reduce_scatter_block");
}

// send [n], recv [P, n].
template <class ExecSpace>
absl::Status MpiCommunicator<ExecSpace>::DoAllGather(const ExecSpace& space, comm::ConstBuffer send,
                                                     comm::Buffer recv) {
  OPENMOE_RETURN_IF_ERROR(CheckPerRankCount("AllGather", send.count));
  space.fence();
  const MPI_Datatype type = MpiDatatype(send.dtype);
  const int n = static_cast<int>(send.count);
  return MpiResult(MPI_Allgather(send.data, n, type, recv.data, n, type, comm_), "MPI_Allgather");
}

// send, recv [P, n]: row p of send goes to rank p, row p of recv comes from rank p.
template <class ExecSpace>
absl::Status MpiCommunicator<ExecSpace>::DoAllToAll(const ExecSpace& space, comm::ConstBuffer send,
                                                    comm::Buffer recv) {
  const int64_t per_peer = send.count / size_;
  OPENMOE_RETURN_IF_ERROR(CheckPerRankCount("AllToAll", per_peer));
  space.fence();
  const MPI_Datatype type = MpiDatatype(send.dtype);
  const int n = static_cast<int>(per_peer);
  return MpiResult(MPI_Alltoall(send.data, n, type, recv.data, n, type, comm_), "MPI_Alltoall");
}

// The receiver splits into the same pieces (same count, same limit), and MPI delivers messages
// between two ranks on one communicator and tag in order.
template <class ExecSpace>
absl::Status MpiCommunicator<ExecSpace>::DoSend(const ExecSpace& space, comm::ConstBuffer send, int peer) {
  space.fence();
  const MPI_Datatype type = MpiDatatype(send.dtype);
  return InPieces(send.count, max_elements_per_call_, [&](int64_t offset, int count) {
    return MpiResult(MPI_Send(At(send.data, offset, send.dtype), count, type, peer, kTag, comm_), "MPI_Send");
  });
}

template <class ExecSpace>
absl::Status MpiCommunicator<ExecSpace>::DoRecv(const ExecSpace& space, comm::Buffer recv, int peer) {
  space.fence();  // work enqueued earlier may still read recv
  const MPI_Datatype type = MpiDatatype(recv.dtype);
  return InPieces(recv.count, max_elements_per_call_, [&](int64_t offset, int count) {
    return MpiResult(MPI_Recv(At(recv.data, offset, recv.dtype), count, type, peer, kTag, comm_, MPI_STATUS_IGNORE),
                     "MPI_Recv");
  });
}

// send, recv [n]. The root copies send into recv and broadcasts recv, so one MPI_Bcast serves the
// in-place and the out-of-place spelling.
template <class ExecSpace>
absl::Status MpiCommunicator<ExecSpace>::DoBroadcast(const ExecSpace& space, comm::ConstBuffer send,
                                                     comm::Buffer recv, int root) {
  space.fence();
  if (rank_ == root && send.data != recv.data && recv.count > 0) {
    std::memcpy(recv.data, send.data, recv.count * comm::DTypeBytes(recv.dtype));  // disjoint (checked)
  }
  const MPI_Datatype type = MpiDatatype(recv.dtype);
  return InPieces(recv.count, max_elements_per_call_, [&](int64_t offset, int count) {
    return MpiResult(MPI_Bcast(At(recv.data, offset, recv.dtype), count, type, root, comm_), "MPI_Bcast");
  });
}

template <class ExecSpace>
absl::Status MpiCommunicator<ExecSpace>::DoBarrier(const ExecSpace& space) {
  space.fence();
  return MpiResult(MPI_Barrier(comm_), "MPI_Barrier");
}

template class MpiCommunicator<Kokkos::Serial>;
#if defined(KOKKOS_ENABLE_OPENMP)
template class MpiCommunicator<Kokkos::OpenMP>;
#endif

}  // namespace openmoe::parallel
