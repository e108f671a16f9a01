// File: parallel/cuda_mpi_test_main.cc
// GoogleTest main for tests of GPU ranks, run by mpirun on every rank (or alone: a world of one):
// mpi_test_main.cc's main, except that in a CUDA build each rank initialises Kokkos on GPU
// local_rank % (visible GPUs), the GPU its NcclCommunicator then uses (Kokkos::Cuda().cuda_device()).
// In a host build it is mpi_test_main.cc's main. One failing rank fails every rank; XML results as
// in mpi_test_main.cc (OPENMOE_GTEST_XML_PREFIX, else rank 0 alone writes).
#include <cstdio>
#include <cstdlib>
#include <string>

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)
#include <cuda_runtime.h>
#endif

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "parallel/mpi_runtime.h"

int main(int argc, char** argv) {
  using openmoe::parallel::AbortAll;
  using openmoe::parallel::MpiResult;
  auto session = openmoe::parallel::MpiSession::Create(&argc, &argv);
  if (!session.ok()) AbortAll(session.status());
  const int rank = (*session)->world_rank(), size = (*session)->world_size();

  if (const char* prefix = std::getenv("OPENMOE_GTEST_XML_PREFIX")) {
    GTEST_FLAG_SET(output, absl::StrCat("xml:", prefix, ".rank", rank, ".xml"));
  } else if (rank > 0) {
    GTEST_FLAG_SET(output, "");
  }
  ::testing::InitGoogleTest(&argc, argv);
  setenv("OMP_PROC_BIND", "false", /*overwrite=*/0);
#if defined(KOKKOS_ENABLE_CUDA)
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 1) {
    AbortAll(absl::FailedPreconditionError("no CUDA device visible"));
  }
  if ((*session)->local_size() > devices) {
    std::fprintf(stderr, "rank %d: warning: %d ranks on this node share %d GPU(s)\n", rank, (*session)->local_size(),
                 devices);
  }
  Kokkos::InitArguments kokkos_args;
  kokkos_args.device_id = (*session)->local_rank() % devices;
  Kokkos::initialize(kokkos_args);
  std::printf("rank %d of %d (local rank %d of %d) on GPU %d of %d; Kokkos default execution space: %s\n", rank, size,
              (*session)->local_rank(), (*session)->local_size(), kokkos_args.device_id, devices,
              Kokkos::DefaultExecutionSpace::name());
#else
  Kokkos::initialize(argc, argv);
  std::printf("rank %d of %d (local rank %d of %d); Kokkos default execution space: %s\n", rank, size,
              (*session)->local_rank(), (*session)->local_size(), Kokkos::DefaultExecutionSpace::name());
#endif
  const int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  Kokkos::finalize();

  int failed_ranks = 0;
  const absl::Status sum = MpiResult(
      MPI_Allreduce(&failed, &failed_ranks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
  if (!sum.ok()) AbortAll(sum);
  if (rank == 0 && failed_ranks > 0) std::printf("FAILED on %d of %d ranks\n", failed_ranks, size);
  std::fflush(stdout);
  return failed_ranks > 0 ? 1 : 0;
}
