// File: parallel/nccl_communicator.h
// openmoe::comm::Communicator<Kokkos::Cuda> over NCCL (from /usr/local/cuda), for ranks whose data
// lives on one GPU each. CUDA builds only (KOKKOS_ENABLE_CUDA); in a host build this header
// declares nothing, and host ranks use MpiCommunicator.
//
//   auto session = MpiSession::Create(&argc, &argv);                           // mpi_runtime.h
//   // Kokkos::initialize on GPU (*session)->local_rank() first (InitArguments::device_id).
//   auto world = NcclCommunicator::Create(MPI_COMM_WORLD, (*session)->local_rank());
//   auto dp = (*world)->Split(/*color=*/rank % ep, /*key=*/rank);              // a sub-group
//   OPENMOE_RETURN_IF_ERROR((*dp)->AllReduce(space, grads));                   // grads [n], in place
//
// Creation (collective over the MPI communicator): rank 0 calls ncclGetUniqueId, MPI_Bcast hands
// the id to every rank, each rank calls cudaSetDevice(device) and ncclCommInitRank. The MPI
// communicator is only used there (it is neither kept nor freed) unless this NCCL has no
// ncclCommSplit (NCCL < 2.18), in which case the communicator keeps a duplicate for Split.
//
// Stream-ordered, as the interface says: every op is enqueued on `space.cuda_stream()` and returns
// without waiting (no fence); fence `space` before reading results on the host. Ops map onto
// ncclAllReduce, ncclReduceScatter, ncclAllGather, ncclSend / ncclRecv, ncclBroadcast; AllToAll is
// one ncclGroupStart / End of an ncclSend and an ncclRecv per peer (this rank's own chunk is a
// cudaMemcpyAsync on the same stream). dtypes: float -> ncclFloat32, bf16 -> ncclBfloat16,
// f16 -> ncclFloat16, int32 -> ncclInt32, int64 -> ncclInt64; kSum / kMax -> ncclSum / ncclMax.
// Ops of zero elements enqueue nothing (every rank of a collective passes the same count).
//
// Barrier: an ncclAllReduce of one int32 on `space`'s stream, then a host wait for that stream
// (polling ncclCommGetAsyncError, so a peer's failure is an error, not a hang): work enqueued on
// `space` after it starts only once every rank reached the barrier, and so does this host thread.
//
// Errors: an ncclResult_t other than ncclSuccess becomes a Status naming the NCCL call, the rank
// (in this communicator and in MPI_COMM_WORLD) and ncclGetErrorString (plus ncclGetLastError);
// ncclInvalidArgument / ncclInvalidUsage are InvalidArgument, ncclRemoteError Unavailable, the
// rest Internal. After an error the communicator is aborted (ncclCommAbort) and every later op
// fails with FailedPrecondition. CUDA errors name the CUDA call and cudaGetErrorString.
//
// Destruction: ncclCommDestroy (ncclCommAbort once an error was seen). Destroying a communicator
// may wait for its peers: destroy a group's communicators in the same order on each of its ranks.
#ifndef OPENMOE_PARALLEL_NCCL_COMMUNICATOR_H_
#define OPENMOE_PARALLEL_NCCL_COMMUNICATOR_H_

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)

#include <cuda_runtime.h>
#include <mpi/mpi.h>
#include <nccl.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/comm/communicator.h"
#include "parallel/mpi_communicator.h"

// ncclCommSplit came with NCCL 2.18; older NCCLs split through MPI_Comm_split and a new unique id.
#if defined(NCCL_VERSION_CODE) && NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
#define OPENMOE_NCCL_HAS_COMM_SPLIT 1
#else
#define OPENMOE_NCCL_HAS_COMM_SPLIT 0
#endif

namespace openmoe::parallel {

// The NCCL datatype and reduction of comm::DType / comm::ReduceOp.
ncclDataType_t NcclDatatype(comm::DType dtype);
ncclRedOp_t NcclRedOp(comm::ReduceOp op);

// OkStatus for ncclSuccess; otherwise an error naming `op`, `rank` (this communicator's, -1 when
// there is none yet), the world rank and NCCL's description:
// "ncclAllReduce failed on rank 1 (world rank 3): unhandled cuda error (...)".
absl::Status NcclResult(ncclResult_t result, const char* op, int rank);
// The same for a CUDA runtime call.
absl::Status CudaResult(cudaError_t result, const char* op, int rank);

class NcclCommunicator final : public comm::Communicator<Kokkos::Cuda> {
 public:
  // Collective over `bootstrap` (every rank of it calls this): one NCCL communicator over the
  // ranks of `bootstrap`, with the same ranks, this process on GPU `device` (cudaSetDevice, which
  // stays set). `device` must be the GPU Kokkos was initialised on (Kokkos::Cuda().cuda_device(),
  // InvalidArgument otherwise). `bootstrap` is not taken over; MPI must be active (MpiSession).
  // A rank that fails before ncclCommInitRank fails every rank (Aborted on the others), no hang.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(MPI_Comm bootstrap, int device);
  template <class HostSpace>
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(const MpiCommunicator<HostSpace>& bootstrap,
                                                                  int device) {
    return Create(bootstrap.mpi_comm(), device);
  }

  ~NcclCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const { return device_; }
  ncclComm_t nccl_comm() const { return comm_; }

  // Communicator::Split with the concrete type. Collective over this communicator (host-side):
  // ncclCommSplit where NCCL has it, else MPI_Comm_split of the kept MPI duplicate and a new
  // unique id per group.
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> Split(int color, int key) const;

 protected:
  absl::Status DoAllReduce(const Kokkos::Cuda& space, comm::ConstBuffer send, comm::Buffer recv,
                           comm::ReduceOp op) override;
  absl::Status DoReduceScatter(const Kokkos::Cuda& space, comm::ConstBuffer send, comm::Buffer recv,
                               comm::ReduceOp op) override;
  absl::Status DoAllGather(const Kokkos::Cuda& space, comm::ConstBuffer send, comm::Buffer recv) override;
  absl::Status DoAllToAll(const Kokkos::Cuda& space, comm::ConstBuffer send, comm::Buffer recv) override;
  absl::Status DoSend(const Kokkos::Cuda& space, comm::ConstBuffer send, int peer) override;
  absl::Status DoRecv(const Kokkos::Cuda& space, comm::Buffer recv, int peer) override;
  absl::Status DoBroadcast(const Kokkos::Cuda& space, comm::ConstBuffer send, comm::Buffer recv,
                           int root) override;
  absl::Status DoBarrier(const Kokkos::Cuda& space) override;
  absl::StatusOr<std::unique_ptr<comm::Communicator<Kokkos::Cuda>>> DoSplit(int color, int key) const override;

 private:
  NcclCommunicator(ncclComm_t comm, int rank, int size, int device, MPI_Comm mpi)
      : comm_(comm), rank_(rank), size_(size), device_(device), mpi_(mpi) {}
  // Creates the communicator over `mpi` (which it takes over when `own_mpi`).
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Init(MPI_Comm mpi, bool own_mpi, int device);
  // FailedPrecondition once aborted; else sets this communicator's device (NCCL calls must be
  // made with it current).
  absl::Status Ready(const char* op) const;
  // `status` as is; aborts the communicator first when it is an error (its state is undefined).
  absl::Status Checked(absl::Status status) const;
  // `result` of enqueuing `op` as a Status, then any asynchronous error NCCL already knows of
  // (ncclCommGetAsyncError); aborts the communicator on an error (Checked).
  absl::Status Enqueued(ncclResult_t result, const char* op) const;
  // Waits for `stream` on the host, polling ncclCommGetAsyncError.
  absl::Status WaitFor(cudaStream_t stream, const char* op) const;

  mutable ncclComm_t comm_;
  int rank_, size_, device_;
  MPI_Comm mpi_;                 // MPI_COMM_NULL unless kept for Split (NCCL < 2.18); owned
  mutable bool aborted_ = false;
  mutable int* barrier_word_ = nullptr;  // one int32 in device memory, allocated on first Barrier
};

}  // namespace openmoe::parallel

#endif  // KOKKOS_ENABLE_CUDA
#endif  // OPENMOE_PARALLEL_NCCL_COMMUNICATOR_H_
