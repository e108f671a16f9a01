// File: parallel/mpi_runtime.h
// The MPI process runtime of a host-rank job: initialisation and finalisation (MpiSession),
// MPI error codes as absl::Status (MpiResult), and AbortAll, which ends every rank of the job.
//
//   int main(int argc, char** argv) {
//     auto session = openmoe::parallel::MpiSession::Create(&argc, &argv);
//     if (!session.ok()) openmoe::parallel::AbortAll(session.status());
//     ... (*session)->world_rank(), (*session)->world_size(), (*session)->local_rank() ...
//     absl::Status s = Train(...);
//     if (!s.ok()) openmoe::parallel::AbortAll(s);  // the other ranks would wait for this one forever
//   }  // the session finalises MPI
//
// Started without mpirun the program is rank 0 of a world of size 1 (OpenMPI's singleton init).
// MPI calls are made from the thread that created the session (MPI_THREAD_FUNNELED): Kokkos'
// OpenMP threads run kernels, never MPI.
//
// The session sets MPI_ERRORS_RETURN on MPI_COMM_WORLD and MPI_COMM_SELF, so MPI errors come back
// as codes (MPI's default handler would abort the job without saying which op failed);
// communicators split or duplicated from them inherit the handler.
#ifndef OPENMOE_PARALLEL_MPI_RUNTIME_H_
#define OPENMOE_PARALLEL_MPI_RUNTIME_H_

#include <memory>

#include <mpi/mpi.h>  // Debian's libopenmpi-dev (//third_party:openmpi)

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace openmoe::parallel {

// OkStatus for MPI_SUCCESS; otherwise an error naming `op`, this process's world rank and MPI's
// description of `code`: "MPI_Allreduce failed on rank 3: MPI_ERR_COUNT: invalid count argument".
absl::Status MpiResult(int code, const char* op);

// Whether MPI calls are allowed now: MPI_Init ran and MPI_Finalize did not.
bool MpiIsActive();

// This process's rank in MPI_COMM_WORLD, or -1 while MPI is not active.
int WorldRankOrMinusOne();

class MpiSession {
 public:
  // Initialises MPI (MPI_Init_thread, MPI_THREAD_FUNNELED) unless it already is, in which case
  // the session only reads ranks and leaves finalisation to whoever initialised it. Fails when
  // MPI was finalised already or gives less than MPI_THREAD_FUNNELED. Collective over the world
  // (local_rank may split MPI_COMM_WORLD).
  static absl::StatusOr<std::unique_ptr<MpiSession>> Create(int* argc, char*** argv);

  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  ~MpiSession();  // MPI_Finalize if this session called MPI_Init_thread

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  // Rank among the processes of this node, in [0, local_size()): picks the GPU of a rank.
  // OMPI_COMM_WORLD_LOCAL_RANK / _SIZE where mpirun set them, else a split of MPI_COMM_WORLD by
  // shared memory (MPI_COMM_TYPE_SHARED).
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  bool initialised_mpi() const { return initialised_mpi_; }  // whether the destructor finalises

 private:
  MpiSession() = default;

  bool initialised_mpi_ = false;
  int world_rank_ = 0, world_size_ = 1, local_rank_ = 0, local_size_ = 1;
};

// Prints "rank R: <status>" to stderr and ends every rank of the job (MPI_Abort on
// MPI_COMM_WORLD, exit code 1), so that ranks blocked in a collective with this one don't hang.
// Without MPI (not initialised, or finalised) it prints "rank 0: ..." and exits with 1.
[[noreturn]] void AbortAll(const absl::Status& status);

}  // namespace openmoe::parallel

#endif  // OPENMOE_PARALLEL_MPI_RUNTIME_H_
