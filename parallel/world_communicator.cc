// File: parallel/world_communicator.cc
#include "parallel/world_communicator.h"

#include <atomic>
#include <climits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "openmoe/core/execution_spaces.h"
#include "openmoe/core/status_macros.h"

#if defined(KOKKOS_ENABLE_CUDA)
#include <cuda_runtime.h>
#include <nccl.h>

#include "parallel/nccl_communicator.h"
#endif

namespace openmoe::parallel {
namespace {

absl::Status NeedMpi(const char* what) {
  if (MpiIsActive()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(what, ": MPI is not active (start the job under mpirun)"));
}

// "MPI_Send (pipeline hidden states)".
std::string Named(const char* call, const char* what) { return absl::StrCat(call, " (", what, ")"); }

absl::Status FitsMpiCount(int64_t count, const char* what) {
  if (count <= INT_MAX) return absl::OkStatus();
  return absl::UnimplementedError(absl::StrCat(what, ": ", count, " elements do not fit one MPI message"));
}

comm::ConstBuffer Floats(const float* data, int64_t count) { return {data, count, comm::DType::kFloat32}; }
comm::Buffer Floats(float* data, int64_t count) { return {data, count, comm::DType::kFloat32}; }

std::atomic<int> communicators_created{0};  // CommunicatorsCreated()

// WorldCommunicator without counting (RankGroup::World counts the group once, in Of).
template <class Space>
absl::StatusOr<std::unique_ptr<comm::Communicator<Space>>> UncountedWorld() {
  if constexpr (kIsCuda<Space>) {
#if defined(KOKKOS_ENABLE_CUDA)
    OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> nccl,
                             NcclCommunicator::Create(MPI_COMM_WORLD, Kokkos::Cuda().cuda_device()));
    return std::unique_ptr<comm::Communicator<Space>>(std::move(nccl));
#endif
  } else {
    OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<MpiCommunicator<Space>> mpi, MpiCommunicator<Space>::World());
    return std::unique_ptr<comm::Communicator<Space>>(std::move(mpi));
  }
}

}  // namespace

int CommunicatorsCreated() { return communicators_created.load(); }

std::unique_ptr<Kokkos::ScopeGuard> RankKokkos(int& argc, char** argv, const MpiSession* session) {
#if defined(KOKKOS_ENABLE_CUDA)
  if (session != nullptr) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 1) devices = 1;  // Kokkos then says why
    Kokkos::InitArguments args;
    args.device_id = session->local_rank() % devices;
    return std::make_unique<Kokkos::ScopeGuard>(args);
  }
#endif
  (void)session;
  return std::make_unique<Kokkos::ScopeGuard>(argc, argv);
}

template <class Space>
absl::StatusOr<std::unique_ptr<comm::Communicator<Space>>> WorldCommunicator() {
  OPENMOE_RETURN_IF_ERROR(NeedMpi("WorldCommunicator"));
  OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<comm::Communicator<Space>> world, UncountedWorld<Space>());
  ++communicators_created;
  return world;
}

template <class Space>
absl::StatusOr<RankGroup<Space>> RankGroup<Space>::Of(std::unique_ptr<comm::Communicator<Space>> comm,
                                                      std::unique_ptr<MpiCommunicator<Kokkos::Serial>> host) {
  if constexpr (kIsCuda<Space>) {
    if (host == nullptr || comm->rank() != host->rank() || comm->size() != host->size()) {
      return absl::InternalError(absl::StrCat("RankGroup: the NCCL communicator has rank ", comm->rank(), " of ",
                                              comm->size(), ", its MPI communicator ", host ? host->rank() : -1, " of ",
                                              host ? host->size() : -1));
    }
    const MPI_Comm mpi = host->mpi_comm();
    ++communicators_created;
    return RankGroup(std::move(comm), std::move(host), mpi);
  } else {
    const MPI_Comm mpi = static_cast<const MpiCommunicator<Space>&>(*comm).mpi_comm();  // always one (UncountedWorld)
    ++communicators_created;
    return RankGroup(std::move(comm), nullptr, mpi);
  }
}

template <class Space>
absl::StatusOr<RankGroup<Space>> RankGroup<Space>::World() {
  OPENMOE_RETURN_IF_ERROR(NeedMpi("RankGroup::World"));
  std::unique_ptr<MpiCommunicator<Kokkos::Serial>> host;
  if constexpr (kIsCuda<Space>) {  // the MPI duplicate first: NCCL's bootstrap goes through it
    OPENMOE_ASSIGN_OR_RETURN(host, MpiCommunicator<Kokkos::Serial>::World());
#if defined(KOKKOS_ENABLE_CUDA)
    OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> nccl,
                             NcclCommunicator::Create(*host, Kokkos::Cuda().cuda_device()));
    return Of(std::move(nccl), std::move(host));
#endif
  }
  OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<comm::Communicator<Space>> comm, UncountedWorld<Space>());
  return Of(std::move(comm), std::move(host));
}

template <class Space>
absl::StatusOr<RankGroup<Space>> RankGroup<Space>::Split(int color, int key) const {
  std::unique_ptr<MpiCommunicator<Kokkos::Serial>> host;
  if (host_ != nullptr) {
    OPENMOE_ASSIGN_OR_RETURN(host, host_->Split(color, key));
  }
  OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<comm::Communicator<Space>> sub, comm_->Split(color, key));
  return Of(std::move(sub), std::move(host));
}

template <class Space>
absl::Status RankGroup<Space>::Send(const Space& space, const float* data, int64_t count, int peer,
                                    const char* what) const {
  if constexpr (kIsCuda<Space>) {
    return comm_->Send(space, Floats(data, count), peer);
  } else {
    OPENMOE_RETURN_IF_ERROR(FitsMpiCount(count, what));
    space.fence();
    return MpiResult(MPI_Send(data, int(count), MPI_FLOAT, peer, 0, mpi_), Named("MPI_Send", what).c_str());
  }
}

template <class Space>
absl::Status RankGroup<Space>::Recv(const Space& space, float* data, int64_t count, int peer,
                                    const char* what) const {
  if constexpr (kIsCuda<Space>) {
    return comm_->Recv(space, Floats(data, count), peer);
  } else {
    OPENMOE_RETURN_IF_ERROR(FitsMpiCount(count, what));
    space.fence();
    return MpiResult(MPI_Recv(data, int(count), MPI_FLOAT, peer, 0, mpi_, MPI_STATUS_IGNORE),
                     Named("MPI_Recv", what).c_str());
  }
}

template <class Space>
absl::Status RankGroup<Space>::SendRecv(const Space& space, const float* send, float* recv, int64_t count, int peer,
                                        const char* what) const {
  if constexpr (kIsCuda<Space>) {
#if defined(KOKKOS_ENABLE_CUDA)
    // One group, so that neither rank's send waits on the GPU for a receive queued behind it.
    OPENMOE_RETURN_IF_ERROR(NcclResult(ncclGroupStart(), "ncclGroupStart (SendRecv)", rank()));
    absl::Status status = comm_->Send(space, Floats(send, count), peer);
    if (status.ok()) status = comm_->Recv(space, Floats(recv, count), peer);
    const ncclResult_t end = ncclGroupEnd();  // the group is closed whatever happened inside it
    OPENMOE_RETURN_IF_ERROR(status);
    return NcclResult(end, Named("ncclGroupEnd", what).c_str(), rank());
#endif
  } else {
    OPENMOE_RETURN_IF_ERROR(FitsMpiCount(count, what));
    space.fence();
    return MpiResult(MPI_Sendrecv(send, int(count), MPI_FLOAT, peer, 0, recv, int(count), MPI_FLOAT, peer, 0, mpi_,
                                  MPI_STATUS_IGNORE),
                     Named("MPI_Sendrecv", what).c_str());
  }
}

#define OPENMOE_WORLD_COMMUNICATOR_INSTANTIATE(Space)                                      \
  template absl::StatusOr<std::unique_ptr<comm::Communicator<Space>>> WorldCommunicator<Space>(); \
  template class RankGroup<Space>;

OPENMOE_WORLD_COMMUNICATOR_INSTANTIATE(Kokkos::Serial)
#if defined(KOKKOS_ENABLE_OPENMP)
OPENMOE_WORLD_COMMUNICATOR_INSTANTIATE(Kokkos::OpenMP)
#endif
#if defined(KOKKOS_ENABLE_CUDA)
OPENMOE_WORLD_COMMUNICATOR_INSTANTIATE(Kokkos::Cuda)
#endif
#undef OPENMOE_WORLD_COMMUNICATOR_INSTANTIATE

}  // namespace openmoe::parallel
