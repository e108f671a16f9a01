// File: parallel/mpi_abort_all_probe.cc
// The failure path that mpi_test.sh checks: the last rank fails and calls AbortAll while every
// other rank waits for it in a barrier it will never reach. AbortAll must end the whole job with
// a non-zero status and "rank <last>: INTERNAL: deliberate failure ..." on stderr; without it the
// other ranks would hang until the wrapper's timeout. Reaching the end is the probe's failure.
#include <cstdio>

#include "absl/status/status.h"
#include "parallel/mpi_runtime.h"

int main(int argc, char** argv) {
  using openmoe::parallel::AbortAll;
  auto session = openmoe::parallel::MpiSession::Create(&argc, &argv);
  if (!session.ok()) AbortAll(session.status());
  const int rank = (*session)->world_rank(), size = (*session)->world_size();
  if (rank == size - 1) AbortAll(absl::InternalError("deliberate failure to test AbortAll"));
  const absl::Status barrier = openmoe::parallel::MpiResult(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  std::printf("rank %d: passed a barrier that rank %d never entered (%s)\n", rank, size - 1,
              barrier.ToString().c_str());
  return 0;
}
