// File: parallel/mpi_test_main.cc
// GoogleTest main for tests run by mpirun on every rank (or alone: a world of one). Initialises
// MPI (MpiSession), then Kokkos; finalises in the reverse order. Every rank runs every test and
// checks its own results; the exit status is the worst over all ranks (an all-reduce of the
// failures), so one failing rank fails every rank, whichever of them mpirun reports.
//
// XML results: with OPENMOE_GTEST_XML_PREFIX set, rank r writes <prefix>.rank<r>.xml (the wrapper
// merges them); otherwise only rank 0 writes the file gtest would write (Bazel's
// XML_OUTPUT_FILE), which every rank would overwrite.
#include <cstdio>
#include <cstdlib>
#include <string>

#include <Kokkos_Core.hpp>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "parallel/mpi_runtime.h"

int main(int argc, char** argv) {
  using openmoe::parallel::AbortAll;
  using openmoe::parallel::MpiResult;
  auto session = openmoe::parallel::MpiSession::Create(&argc, &argv);
  if (!session.ok()) AbortAll(session.status());
  const int rank = (*session)->world_rank(), size = (*session)->world_size();

  // Before InitGoogleTest, which sets up the XML output (a --gtest_output argument still wins).
  if (const char* prefix = std::getenv("OPENMOE_GTEST_XML_PREFIX")) {
    GTEST_FLAG_SET(output, absl::StrCat("xml:", prefix, ".rank", rank, ".xml"));
  } else if (rank > 0) {
    GTEST_FLAG_SET(output, "");
  }
  ::testing::InitGoogleTest(&argc, argv);
  setenv("OMP_PROC_BIND", "false", /*overwrite=*/0);  // Kokkos' advice for unit tests
  Kokkos::initialize(argc, argv);
  std::printf("rank %d of %d (local rank %d of %d); Kokkos default execution space: %s\n", rank, size,
              (*session)->local_rank(), (*session)->local_size(), Kokkos::DefaultExecutionSpace::name());
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
