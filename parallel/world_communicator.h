// File: parallel/world_communicator.h
// The job's ranks as tools/train talks to them, whatever the backend. Host execution spaces
// (Serial, OpenMP) communicate through MPI (MpiCommunicator); Kokkos::Cuda through NCCL
// (NcclCommunicator over MPI_COMM_WORLD, on the GPU Kokkos runs on, which RankKokkos makes the
// rank's local_rank). Callers write the same code for both:
//
//   auto session = MpiSession::Create(&argc, &argv);                    // mpi_runtime.h
//   auto kokkos = RankKokkos(argc, argv, session->get());                // Kokkos on the rank's GPU
//   auto ep = WorldCommunicator<Space>();                                // collective: every rank
//   auto group = (*ep)->Split(/*color=*/rank % k, /*key=*/rank);         // comm::Communicator::Split
//
//   auto dp = RankGroup<Space>::World();                                 // device + host communicator
//   OPENMOE_RETURN_IF_ERROR(dp->comm()->AllReduce(space, grads));        // grads in Space's memory
//   MPI_Allreduce(MPI_IN_PLACE, parts, 4, MPI_DOUBLE, MPI_SUM, dp->mpi_comm());  // doubles on the host
//
// RankGroup: the communicator of data in Space's memory together with an MPI communicator over
// the same ranks in the same order, for values that live on the host (loss parts). On host spaces
// both are one MpiCommunicator (what train used before NCCL, so host runs are unchanged); on Cuda
// the MPI one is a duplicate of MPI_COMM_WORLD made alongside (it also bootstraps NCCL), and Split
// splits both (MPI first, then ncclCommSplit; the ranks must agree, else Internal).
//
// Point-to-point of float32 buffers in Space's memory (the pipeline's hidden states and their
// gradients): Send, Recv and SendRecv (a paired exchange with one peer: send first, then receive,
// which never deadlocks against the peer's own SendRecv). Host spaces: `space` is fenced, then
// blocking MPI_Send / MPI_Recv / MPI_Sendrecv (tag 0), whose errors name `what`. Cuda:
// stream-ordered on `space` as every NCCL op (ncclSend / ncclRecv; SendRecv is one NCCL group of
// both), the host does not wait: work enqueued on `space` afterwards sees the received data.
//
// Everything here needs an active MPI session (FailedPrecondition otherwise). Destroy a group's
// communicators in the same order on each of its ranks (they may wait for their peers).
//
// Each WorldCommunicator() and each RankGroup made (World, Split) is a communicator over ranks
// (on Cuda an NCCL one: device memory for its peers' buffers and a collective init), so callers
// make each group once and share it; CommunicatorsCreated() counts them for this process.
#ifndef OPENMOE_PARALLEL_WORLD_COMMUNICATOR_H_
#define OPENMOE_PARALLEL_WORLD_COMMUNICATOR_H_

#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

#include <Kokkos_Core.hpp>
#include <mpi/mpi.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/comm/communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_runtime.h"

namespace openmoe::parallel {

// Whether this build has a communicator for ranks of `Space`: host spaces (MPI) always, Cuda in
// CUDA builds (NCCL).
template <class Space>
inline constexpr bool kHasWorldCommunicator = std::is_same_v<typename Space::memory_space, Kokkos::HostSpace>
#if defined(KOKKOS_ENABLE_CUDA)
                                              || std::is_same_v<Space, Kokkos::Cuda>
#endif
    ;

// Kokkos for this process, as a scope guard (finalised when it is destroyed). In a CUDA build under
// MPI (`session` non-null) on GPU session->local_rank() % (visible GPUs) (InitArguments::device_id;
// KOKKOS_* environment variables still apply), the GPU the NCCL communicators then use; otherwise
// Kokkos::initialize(argc, argv), as before.
std::unique_ptr<Kokkos::ScopeGuard> RankKokkos(int& argc, char** argv, const MpiSession* session);

// A communicator of every rank of the job (collective over MPI_COMM_WORLD): on host spaces its own
// duplicate of MPI_COMM_WORLD (MpiCommunicator<Space>::World), on Cuda an NcclCommunicator on
// Kokkos::Cuda().cuda_device(). Sub-groups: its Split.
template <class Space>
absl::StatusOr<std::unique_ptr<comm::Communicator<Space>>> WorldCommunicator();

// How many communicators this process has created here so far, whatever the space: one for each
// WorldCommunicator() and one for each RankGroup (World, Split; on Cuda that is one NCCL
// communicator together with its MPI twin). Splits made on a comm::Communicator directly are
// not counted.
int CommunicatorsCreated();

template <class Space>
class RankGroup {
 public:
  // Every rank of the job (collective over MPI_COMM_WORLD).
  static absl::StatusOr<RankGroup> World();
  // Collective over this group: the ranks with the same color >= 0, ordered by (key, rank).
  absl::StatusOr<RankGroup> Split(int color, int key) const;

  int rank() const { return comm_->rank(); }
  int size() const { return comm_->size(); }
  // The communicator of data in Space's memory (stream-ordered on Cuda).
  const std::shared_ptr<comm::Communicator<Space>>& comm() const { return comm_; }
  // MPI over the same ranks in the same order (host values; blocking MPI calls).
  MPI_Comm mpi_comm() const { return mpi_; }

  // float32 point-to-point with `peer` (see the file comment); `what` names the data in errors.
  absl::Status Send(const Space& space, const float* data, int64_t count, int peer, const char* what) const;
  absl::Status Recv(const Space& space, float* data, int64_t count, int peer, const char* what) const;
  absl::Status SendRecv(const Space& space, const float* send, float* recv, int64_t count, int peer,
                        const char* what) const;

 private:
  RankGroup(std::shared_ptr<comm::Communicator<Space>> comm, std::shared_ptr<MpiCommunicator<Kokkos::Serial>> host,
            MPI_Comm mpi)
      : host_(std::move(host)), comm_(std::move(comm)), mpi_(mpi) {}
  // A group of `comm` (host spaces: an MpiCommunicator<Space>) or of `comm` and `host` (Cuda).
  static absl::StatusOr<RankGroup> Of(std::unique_ptr<comm::Communicator<Space>> comm,
                                      std::unique_ptr<MpiCommunicator<Kokkos::Serial>> host);

  std::shared_ptr<MpiCommunicator<Kokkos::Serial>> host_;  // Cuda only; destroyed after comm_
  std::shared_ptr<comm::Communicator<Space>> comm_;
  MPI_Comm mpi_;  // host_'s, or (host spaces) comm_'s own
};

}  // namespace openmoe::parallel

#endif  // OPENMOE_PARALLEL_WORLD_COMMUNICATOR_H_
