// File: parallel/nccl_communicator.cc
#include "parallel/nccl_communicator.h"

#if defined(KOKKOS_ENABLE_CUDA)

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "openmoe/core/status_macros.h"
#include "parallel/mpi_runtime.h"

namespace openmoe::parallel {
namespace {

std::string RankWords(int rank) {
  return rank < 0 ? absl::StrCat("world rank ", WorldRankOrMinusOne())
                  : absl::StrCat("rank ", rank, " (world rank ", WorldRankOrMinusOne(), ")");
}

const void* At(const void* data, int64_t offset, comm::DType dtype) {
  return static_cast<const char*>(data) + offset * comm::DTypeBytes(dtype);
}
void* At(void* data, int64_t offset, comm::DType dtype) {
  return static_cast<char*>(data) + offset * comm::DTypeBytes(dtype);
}

}  // namespace

ncclDataType_t NcclDatatype(comm::DType dtype) {
  switch (dtype) {
    case comm::DType::kFloat32: return ncclFloat32;
    case comm::DType::kBf16: return ncclBfloat16;
    case comm::DType::kF16: return ncclFloat16;
    case comm::DType::kInt32: return ncclInt32;
    case comm::DType::kInt64: return ncclInt64;
  }
  return ncclFloat32;  // unreachable: every DType is listed
}

ncclRedOp_t NcclRedOp(comm::ReduceOp op) { return op == comm::ReduceOp::kMax ? ncclMax : ncclSum; }

absl::Status NcclResult(ncclResult_t result, const char* op, int rank) {
  if (result == ncclSuccess) return absl::OkStatus();
  std::string message = absl::StrCat(op, " failed on ", RankWords(rank), ": ", ncclGetErrorString(result));
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
  if (const char* last = ncclGetLastError(nullptr); last != nullptr && last[0] != '\0') {
    absl::StrAppend(&message, " (", last, ")");
  }
#endif
  switch (result) {
    case ncclInvalidArgument:
    case ncclInvalidUsage: return absl::InvalidArgumentError(message);
    case ncclRemoteError: return absl::UnavailableError(message);
    default: return absl::InternalError(message);
  }
}

absl::Status CudaResult(cudaError_t result, const char* op, int rank) {
  if (result == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(op, " failed on ", RankWords(rank), ": ", cudaGetErrorName(result), ": ",
                                          cudaGetErrorString(result)));
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(MPI_Comm bootstrap, int device) {
  if (!MpiIsActive()) {
    return absl::FailedPreconditionError("NcclCommunicator::Create: MPI is not active (create an MpiSession first)");
  }
  if (bootstrap == MPI_COMM_NULL) return absl::InvalidArgumentError("NcclCommunicator::Create: null MPI communicator");
#if OPENMOE_NCCL_HAS_COMM_SPLIT
  return Init(bootstrap, /*own_mpi=*/false, device);
#else
  MPI_Comm dup = MPI_COMM_NULL;  // kept for Split
  OPENMOE_RETURN_IF_ERROR(MpiResult(MPI_Comm_dup(bootstrap, &dup), "MPI_Comm_dup"));
  return Init(dup, /*own_mpi=*/true, device);
#endif
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Init(MPI_Comm mpi, bool own_mpi, int device) {
  auto fail = [&](absl::Status status) {  // frees `mpi` when it was handed over
    if (own_mpi && mpi != MPI_COMM_NULL) MPI_Comm_free(&mpi);
    return status;
  };
  int rank = 0, size = 0;
  if (absl::Status s = MpiResult(MPI_Comm_rank(mpi, &rank), "MPI_Comm_rank"); !s.ok()) return fail(s);
  if (absl::Status s = MpiResult(MPI_Comm_size(mpi, &size), "MPI_Comm_size"); !s.ok()) return fail(s);

  // Everything that can fail locally happens before the first rank enters ncclCommInitRank (which
  // would wait for the others forever); the ranks agree on the outcome through an all-reduce.
  absl::Status local = absl::OkStatus();
  int devices = 0;
  local = CudaResult(cudaGetDeviceCount(&devices), "cudaGetDeviceCount", rank);
  if (local.ok() && (device < 0 || device >= devices)) {
    local = absl::InvalidArgumentError(absl::StrCat("NcclCommunicator::Create on ", RankWords(rank), ": device ",
                                                    device, " is not one of the ", devices, " visible GPUs"));
  }
  if (local.ok() && Kokkos::Cuda().cuda_device() != device) {  // its streams are on its GPU
    local = absl::InvalidArgumentError(absl::StrCat("NcclCommunicator::Create on ", RankWords(rank), ": Kokkos runs on GPU ",
                                                    Kokkos::Cuda().cuda_device(), ", not on GPU ", device,
                                                    " (initialise Kokkos with device_id = the rank's GPU)"));
  }
  if (local.ok()) local = CudaResult(cudaSetDevice(device), "cudaSetDevice", rank);
  ncclUniqueId id{};
  if (rank == 0 && local.ok()) local = NcclResult(ncclGetUniqueId(&id), "ncclGetUniqueId", rank);
  if (absl::Status s = MpiResult(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, mpi), "MPI_Bcast"); !s.ok()) {
    return fail(s);
  }
  int my_failure = local.ok() ? 0 : 1, failures = 0;
  if (absl::Status s = MpiResult(MPI_Allreduce(&my_failure, &failures, 1, MPI_INT, MPI_SUM, mpi), "MPI_Allreduce");
      !s.ok()) {
    return fail(s);
  }
  if (!local.ok()) return fail(local);
  if (failures > 0) {
    return fail(absl::AbortedError(absl::StrCat("NcclCommunicator::Create on ", RankWords(rank), ": ", failures,
                                                " other rank(s) failed before ncclCommInitRank")));
  }

  ncclComm_t comm = nullptr;
  if (absl::Status s = NcclResult(ncclCommInitRank(&comm, size, id, rank), "ncclCommInitRank", rank); !s.ok()) {
    if (comm != nullptr) ncclCommAbort(comm);
    return fail(s);
  }
  int nccl_rank = -1, nccl_size = -1;
  absl::Status s = NcclResult(ncclCommUserRank(comm, &nccl_rank), "ncclCommUserRank", rank);
  if (s.ok()) s = NcclResult(ncclCommCount(comm, &nccl_size), "ncclCommCount", rank);
  if (s.ok() && (nccl_rank != rank || nccl_size != size)) {
    s = absl::InternalError(absl::StrCat("ncclCommInitRank on ", RankWords(rank), ": NCCL says rank ", nccl_rank, " of ",
                                         nccl_size, ", MPI rank ", rank, " of ", size));
  }
  if (!s.ok()) {
    ncclCommAbort(comm);
    return fail(s);
  }
  auto result = std::unique_ptr<NcclCommunicator>(new NcclCommunicator(comm, rank, size, device, own_mpi ? mpi : MPI_COMM_NULL));
  // The barrier's word (the communicator owns it from here, so the destructor frees it on failure).
  OPENMOE_RETURN_IF_ERROR(CudaResult(cudaMalloc(reinterpret_cast<void**>(&result->barrier_word_), sizeof(int32_t)),
                                     "cudaMalloc", rank));
  OPENMOE_RETURN_IF_ERROR(CudaResult(cudaMemset(result->barrier_word_, 0, sizeof(int32_t)), "cudaMemset", rank));
  return result;
}

NcclCommunicator::~NcclCommunicator() {
  if (device_ >= 0) cudaSetDevice(device_);
  if (comm_ != nullptr && !aborted_) {
    if (ncclCommDestroy(comm_) != ncclSuccess) ncclCommAbort(comm_);
  }
  comm_ = nullptr;
  if (barrier_word_ != nullptr) cudaFree(barrier_word_);
  if (mpi_ != MPI_COMM_NULL && MpiIsActive()) MPI_Comm_free(&mpi_);
}

absl::Status NcclCommunicator::Ready(const char* op) const {
  if (aborted_ || comm_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(op, " on ", RankWords(rank_), ": the NCCL communicator was aborted after an earlier error"));
  }
  return CudaResult(cudaSetDevice(device_), "cudaSetDevice", rank_);
}

absl::Status NcclCommunicator::Checked(absl::Status status) const {
  if (!status.ok() && !aborted_ && comm_ != nullptr) {
    ncclCommAbort(comm_);  // NCCL leaves the communicator in an undefined state after an error
    comm_ = nullptr;
    aborted_ = true;
  }
  return status;
}

absl::Status NcclCommunicator::Enqueued(ncclResult_t result, const char* op) const {
  OPENMOE_RETURN_IF_ERROR(Checked(NcclResult(result, op, rank_)));
  // Any asynchronous error NCCL already knows of (a peer that failed, a network error) is this
  // op's error too.
  ncclResult_t async = ncclSuccess;
  OPENMOE_RETURN_IF_ERROR(Checked(NcclResult(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError", rank_)));
  if (async == ncclInProgress) return absl::OkStatus();
  return Checked(NcclResult(async, op, rank_));
}

absl::Status NcclCommunicator::WaitFor(cudaStream_t stream, const char* op) const {
  for (;;) {
    const cudaError_t query = cudaStreamQuery(stream);
    if (query == cudaSuccess) return absl::OkStatus();
    if (query != cudaErrorNotReady) return Checked(CudaResult(query, "cudaStreamQuery", rank_));
    ncclResult_t async = ncclSuccess;
    OPENMOE_RETURN_IF_ERROR(Checked(NcclResult(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError", rank_)));
    if (async != ncclSuccess && async != ncclInProgress) return Checked(NcclResult(async, op, rank_));
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Split(int color, int key) const {
  OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<comm::Communicator<Kokkos::Cuda>> sub,
                           comm::Communicator<Kokkos::Cuda>::Split(color, key));
  return std::unique_ptr<NcclCommunicator>(static_cast<NcclCommunicator*>(sub.release()));
}

absl::StatusOr<std::unique_ptr<comm::Communicator<Kokkos::Cuda>>> NcclCommunicator::DoSplit(int color,
                                                                                            int key) const {
  OPENMOE_RETURN_IF_ERROR(Ready("Split"));
#if OPENMOE_NCCL_HAS_COMM_SPLIT
  ncclComm_t sub = nullptr;
  // config nullptr: the new communicator inherits this one's (blocking) configuration.
  OPENMOE_RETURN_IF_ERROR(Checked(NcclResult(ncclCommSplit(comm_, color, key, &sub, nullptr), "ncclCommSplit", rank_)));
  if (sub == nullptr) {
    return absl::InternalError(absl::StrCat("ncclCommSplit on ", RankWords(rank_), ": no communicator for color ", color));
  }
  int sub_rank = -1, sub_size = -1;
  absl::Status s = NcclResult(ncclCommUserRank(sub, &sub_rank), "ncclCommUserRank", rank_);
  if (s.ok()) s = NcclResult(ncclCommCount(sub, &sub_size), "ncclCommCount", rank_);
  if (!s.ok()) {
    ncclCommAbort(sub);
    return s;
  }
  auto result = std::unique_ptr<NcclCommunicator>(new NcclCommunicator(sub, sub_rank, sub_size, device_, MPI_COMM_NULL));
  OPENMOE_RETURN_IF_ERROR(CudaResult(cudaMalloc(reinterpret_cast<void**>(&result->barrier_word_), sizeof(int32_t)),
                                     "cudaMalloc", sub_rank));
  OPENMOE_RETURN_IF_ERROR(CudaResult(cudaMemset(result->barrier_word_, 0, sizeof(int32_t)), "cudaMemset", sub_rank));
  return std::unique_ptr<comm::Communicator<Kokkos::Cuda>>(std::move(result));
#else
  if (!MpiIsActive()) return absl::FailedPreconditionError("NcclCommunicator::Split: MPI is not active");
  MPI_Comm sub = MPI_COMM_NULL;
  OPENMOE_RETURN_IF_ERROR(MpiResult(MPI_Comm_split(mpi_, color, key, &sub), "MPI_Comm_split"));
  OPENMOE_ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> made, Init(sub, /*own_mpi=*/true, device_));
  return std::unique_ptr<comm::Communicator<Kokkos::Cuda>>(std::move(made));
#endif
}

// send, recv [n]; in place when they are one buffer (NCCL allows that).
absl::Status NcclCommunicator::DoAllReduce(const Kokkos::Cuda& space, comm::ConstBuffer send, comm::Buffer recv,
                                           comm::ReduceOp op) {
  OPENMOE_RETURN_IF_ERROR(Ready("AllReduce"));
  if (recv.count == 0) return absl::OkStatus();
  return Enqueued(ncclAllReduce(send.data, recv.data, size_t(recv.count), NcclDatatype(recv.dtype), NcclRedOp(op),
                                comm_, space.cuda_stream()),
                  "ncclAllReduce");
}

// send [P, n], recv [n].
absl::Status NcclCommunicator::DoReduceScatter(const Kokkos::Cuda& space, comm::ConstBuffer send, comm::Buffer recv,
                                               comm::ReduceOp op) {
  OPENMOE_RETURN_IF_ERROR(Ready("ReduceScatter"));
  if (recv.count == 0) return absl::OkStatus();
  return Enqueued(ncclReduceScatter(send.data, recv.data, size_t(recv.count), NcclDatatype(recv.dtype), NcclRedOp(op),
                                    comm_, space.cuda_stream()),
                  "ncclReduceScatter");
}

// send [n], recv [P, n].
absl::Status NcclCommunicator::DoAllGather(const Kokkos::Cuda& space, comm::ConstBuffer send, comm::Buffer recv) {
  OPENMOE_RETURN_IF_ERROR(Ready("AllGather"));
  if (send.count == 0) return absl::OkStatus();
  return Enqueued(
      ncclAllGather(send.data, recv.data, size_t(send.count), NcclDatatype(send.dtype), comm_, space.cuda_stream()),
      "ncclAllGather");
}

// send, recv [P, n]: row p of send goes to rank p, row p of recv comes from rank p. One NCCL group
// of a send and a receive per peer; this rank's own row is a device-to-device copy on the stream.
absl::Status NcclCommunicator::DoAllToAll(const Kokkos::Cuda& space, comm::ConstBuffer send, comm::Buffer recv) {
  OPENMOE_RETURN_IF_ERROR(Ready("AllToAll"));
  const int64_t n = send.count / size_;
  if (n == 0) return absl::OkStatus();
  const cudaStream_t stream = space.cuda_stream();
  const ncclDataType_t type = NcclDatatype(send.dtype);
  OPENMOE_RETURN_IF_ERROR(Checked(CudaResult(
      cudaMemcpyAsync(At(recv.data, rank_ * n, recv.dtype), At(send.data, rank_ * n, send.dtype),
                      size_t(n * comm::DTypeBytes(send.dtype)), cudaMemcpyDeviceToDevice, stream),
      "cudaMemcpyAsync (AllToAll)", rank_)));
  if (size_ == 1) return absl::OkStatus();
  OPENMOE_RETURN_IF_ERROR(Checked(NcclResult(ncclGroupStart(), "ncclGroupStart (AllToAll)", rank_)));
  absl::Status first = absl::OkStatus();
  for (int p = 0; p < size_ && first.ok(); ++p) {
    if (p == rank_) continue;
    first = NcclResult(ncclSend(At(send.data, p * n, send.dtype), size_t(n), type, p, comm_, stream),
                       "ncclSend (AllToAll)", rank_);
    if (first.ok()) {
      first = NcclResult(ncclRecv(At(recv.data, p * n, recv.dtype), size_t(n), type, p, comm_, stream),
                         "ncclRecv (AllToAll)", rank_);
    }
  }
  const ncclResult_t end = ncclGroupEnd();  // the group is closed whatever happened inside it
  OPENMOE_RETURN_IF_ERROR(Checked(first));
  return Enqueued(end, "ncclGroupEnd (AllToAll)");
}

absl::Status NcclCommunicator::DoSend(const Kokkos::Cuda& space, comm::ConstBuffer send, int peer) {
  OPENMOE_RETURN_IF_ERROR(Ready("Send"));
  if (send.count == 0) return absl::OkStatus();
  return Enqueued(
      ncclSend(send.data, size_t(send.count), NcclDatatype(send.dtype), peer, comm_, space.cuda_stream()), "ncclSend");
}

absl::Status NcclCommunicator::DoRecv(const Kokkos::Cuda& space, comm::Buffer recv, int peer) {
  OPENMOE_RETURN_IF_ERROR(Ready("Recv"));
  if (recv.count == 0) return absl::OkStatus();
  return Enqueued(
      ncclRecv(recv.data, size_t(recv.count), NcclDatatype(recv.dtype), peer, comm_, space.cuda_stream()), "ncclRecv");
}

// send, recv [n]; send is read on the root only; in place when they are one buffer.
absl::Status NcclCommunicator::DoBroadcast(const Kokkos::Cuda& space, comm::ConstBuffer send, comm::Buffer recv,
                                           int root) {
  OPENMOE_RETURN_IF_ERROR(Ready("Broadcast"));
  if (recv.count == 0) return absl::OkStatus();
  return Enqueued(ncclBroadcast(send.data, recv.data, size_t(recv.count), NcclDatatype(recv.dtype), root, comm_,
                                space.cuda_stream()),
                  "ncclBroadcast");
}

// An all-reduce of one int32 on the stream, then a host wait for the stream (see the header).
absl::Status NcclCommunicator::DoBarrier(const Kokkos::Cuda& space) {
  OPENMOE_RETURN_IF_ERROR(Ready("Barrier"));
  const cudaStream_t stream = space.cuda_stream();
  OPENMOE_RETURN_IF_ERROR(Enqueued(ncclAllReduce(barrier_word_, barrier_word_, 1, ncclInt32, ncclSum, comm_, stream),
                                   "ncclAllReduce (Barrier)"));
  return WaitFor(stream, "Barrier");
}

}  // namespace openmoe::parallel

#endif  // KOKKOS_ENABLE_CUDA
