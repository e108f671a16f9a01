// File: parallel/mpi_communicator.h
// openmoe::comm::Communicator over MPI, for ranks whose data lives in host memory (Kokkos::Serial,
// Kokkos::OpenMP; CUDA ranks will use NCCL). Each op fences `space` (so MPI reads what the work
// enqueued before it wrote), then makes blocking MPI calls: when the op returns, its result is in
// place, and everything later on `space` sees it.
//
//   auto session = MpiSession::Create(&argc, &argv);               // mpi_runtime.h
//   auto world = MpiCommunicator<Kokkos::OpenMP>::World();          // every rank
//   auto dp = (*world)->Split(/*color=*/rank % ep, /*key=*/rank);   // a sub-group
//   OPENMOE_RETURN_IF_ERROR((*dp)->AllReduce(space, grads));        // grads [n], in place
//
// Ops map one to one onto MPI_Allreduce (MPI_IN_PLACE when send and recv are one buffer),
// MPI_Reduce_scatter_block, MPI_Allgather, MPI_Alltoall, MPI_Send / MPI_Recv (tag 0), MPI_Bcast,
// MPI_Barrier and MPI_Comm_split; datatypes and the 16-bit float reductions: mpi_types.h. MPI
// counts are ints: AllReduce, Broadcast, Send and Recv of more elements run as several calls of
// at most max_elements_per_call() each; ReduceScatter, AllGather and AllToAll with more than that
// many elements per rank are refused (Unimplemented) rather than truncated. Errors name the MPI
// call and this process's world rank (MpiResult).
#ifndef OPENMOE_PARALLEL_MPI_COMMUNICATOR_H_
#define OPENMOE_PARALLEL_MPI_COMMUNICATOR_H_

#include <climits>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

#include <Kokkos_Core.hpp>
#include <mpi/mpi.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/comm/communicator.h"
#include "openmoe/core/execution_spaces.h"
#include "parallel/mpi_types.h"

namespace openmoe::parallel {

// The execution spaces MpiCommunicator is built for: the host ones this build enables.
using MpiExecutionSpaces = ExecutionSpaceList<
#if defined(KOKKOS_ENABLE_OPENMP)
    Kokkos::OpenMP,
#endif
    Kokkos::Serial>;

template <class ExecSpace>
class MpiCommunicator final : public comm::Communicator<ExecSpace> {
  static_assert(std::is_same<typename ExecSpace::memory_space, Kokkos::HostSpace>::value,
                "MpiCommunicator hands host pointers to MPI: host execution spaces only");

 public:
  // A communicator over every rank of the job: its own duplicate of MPI_COMM_WORLD, so that its
  // messages never mix with anyone else's. FailedPrecondition unless MPI is active (MpiSession).
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> World();
  // Takes ownership of `comm` (freed by the destructor, also when this fails) and sets
  // MPI_ERRORS_RETURN on it. Not for MPI_COMM_WORLD / MPI_COMM_SELF: duplicate those.
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> Adopt(MPI_Comm comm);

  // Frees the MPI_Comm (while MPI is active). MPI_Comm_free is collective: destroy a group's
  // communicators in the same order on each of its ranks, before the MpiSession ends.
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MPI_Comm mpi_comm() const { return comm_; }

  // Communicator::Split with the concrete type (hides the base's spelling, which gives the
  // same communicator as a Communicator<ExecSpace>). Collective over this communicator.
  absl::StatusOr<std::unique_ptr<MpiCommunicator>> Split(int color, int key) const;

  int64_t max_elements_per_call() const { return max_elements_per_call_; }
  // Tests lower the limit (>= 1) to run the several-calls path on small buffers; every rank of
  // the communicator must use the same value.
  void set_max_elements_per_call_for_testing(int64_t n) { max_elements_per_call_ = n < 1 ? 1 : n; }

 protected:
  absl::Status DoAllReduce(const ExecSpace& space, comm::ConstBuffer send, comm::Buffer recv,
                           comm::ReduceOp op) override;
  absl::Status DoReduceScatter(const ExecSpace& space, comm::ConstBuffer send, comm::Buffer recv,
                               comm::ReduceOp op) override;
  absl::Status DoAllGather(const ExecSpace& space, comm::ConstBuffer send, comm::Buffer recv) override;
  absl::Status DoAllToAll(const ExecSpace& space, comm::ConstBuffer send, comm::Buffer recv) override;
  absl::Status DoSend(const ExecSpace& space, comm::ConstBuffer send, int peer) override;
  absl::Status DoRecv(const ExecSpace& space, comm::Buffer recv, int peer) override;
  absl::Status DoBroadcast(const ExecSpace& space, comm::ConstBuffer send, comm::Buffer recv,
                           int root) override;
  absl::Status DoBarrier(const ExecSpace& space) override;
  absl::StatusOr<std::unique_ptr<comm::Communicator<ExecSpace>>> DoSplit(int color, int key) const override;

 private:
  MpiCommunicator(MPI_Comm comm, int rank, int size, MpiReduceOps ops)
      : comm_(comm), rank_(rank), size_(size), ops_(std::move(ops)) {}
  // Unimplemented when `per_rank` elements do not fit one MPI call.
  absl::Status CheckPerRankCount(const char* op, int64_t per_rank) const;

  MPI_Comm comm_;
  int rank_, size_;
  MpiReduceOps ops_;
  int64_t max_elements_per_call_ = INT_MAX;
};

}  // namespace openmoe::parallel

#endif  // OPENMOE_PARALLEL_MPI_COMMUNICATOR_H_
