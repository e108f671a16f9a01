// File: parallel/mpi_runtime.cc
#include "parallel/mpi_runtime.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "openmoe/core/status_macros.h"

namespace openmoe::parallel {
namespace {

// The MPI error class as the nearest absl code: argument errors are the caller's, the rest are
// the library's or the job's (a dead peer, a transport failure).
absl::StatusCode CodeOf(int error_class) {
  switch (error_class) {
    case MPI_ERR_BUFFER:
    case MPI_ERR_COUNT:
    case MPI_ERR_TYPE:
    case MPI_ERR_TAG:
    case MPI_ERR_COMM:
    case MPI_ERR_RANK:
    case MPI_ERR_ROOT:
    case MPI_ERR_OP:
    case MPI_ERR_ARG:
      return absl::StatusCode::kInvalidArgument;
    default:
      return absl::StatusCode::kInternal;
  }
}

// An environment variable holding a non-negative integer, else -1.
int EnvInt(const char* name) {
  const char* value = std::getenv(name);
  int parsed = -1;
  if (value == nullptr || !absl::SimpleAtoi(value, &parsed) || parsed < 0) return -1;
  return parsed;
}

}  // namespace

bool MpiIsActive() {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);  // both may be called at any time, even before MPI_Init
  MPI_Finalized(&finalised);
  return initialised && !finalised;
}

int WorldRankOrMinusOne() {
  if (!MpiIsActive()) return -1;
  int rank = -1;
  if (MPI_Comm_rank(MPI_COMM_WORLD, &rank) != MPI_SUCCESS) return -1;
  return rank;
}

absl::Status MpiResult(int code, const char* op) {
  if (code == MPI_SUCCESS) return absl::OkStatus();
  int error_class = code, length = 0;
  char text[MPI_MAX_ERROR_STRING] = {0};
  if (MPI_Error_class(code, &error_class) != MPI_SUCCESS) error_class = MPI_ERR_UNKNOWN;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
  return absl::Status(CodeOf(error_class),
                      absl::StrCat(op, " failed on rank ", WorldRankOrMinusOne(), ": ",
                                   length > 0 ? std::string(text, length) : absl::StrCat("MPI error ", code)));
}

absl::StatusOr<std::unique_ptr<MpiSession>> MpiSession::Create(int* argc, char*** argv) {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (finalised) return absl::FailedPreconditionError("MpiSession: MPI was finalised already");
  std::unique_ptr<MpiSession> session(new MpiSession());
  int provided = MPI_THREAD_SINGLE;
  if (!initialised) {
    // MPI_Init's errors go to MPI_COMM_WORLD's default handler (abort): the code is a formality.
    OPENMOE_RETURN_IF_ERROR(MpiResult(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided),
                                      "MPI_Init_thread"));
    session->initialised_mpi_ = true;  // from here on the destructor finalises, also on errors
  } else {
    OPENMOE_RETURN_IF_ERROR(MpiResult(MPI_Query_thread(&provided), "MPI_Query_thread"));
  }
  if (provided < MPI_THREAD_FUNNELED) {
    return absl::FailedPreconditionError(
        absl::StrCat("MpiSession: MPI provides thread level ", provided, ", below MPI_THREAD_FUNNELED"));
  }
  OPENMOE_RETURN_IF_ERROR(
      MpiResult(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler"));
  OPENMOE_RETURN_IF_ERROR(
      MpiResult(MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler"));
  OPENMOE_RETURN_IF_ERROR(MpiResult(MPI_Comm_rank(MPI_COMM_WORLD, &session->world_rank_), "MPI_Comm_rank"));
  OPENMOE_RETURN_IF_ERROR(MpiResult(MPI_Comm_size(MPI_COMM_WORLD, &session->world_size_), "MPI_Comm_size"));

  // mpirun sets both variables on every rank or on none, so every rank takes the same branch
  // (the split is collective).
  const int env_local_rank = EnvInt("OMPI_COMM_WORLD_LOCAL_RANK");
  const int env_local_size = EnvInt("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (env_local_rank >= 0 && env_local_size > env_local_rank) {
    session->local_rank_ = env_local_rank;
    session->local_size_ = env_local_size;
  } else {
    MPI_Comm node = MPI_COMM_NULL;
    OPENMOE_RETURN_IF_ERROR(
        MpiResult(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, session->world_rank_,
                                      MPI_INFO_NULL, &node),
                  "MPI_Comm_split_type"));
    absl::Status status = MpiResult(MPI_Comm_rank(node, &session->local_rank_), "MPI_Comm_rank");
    if (status.ok()) status = MpiResult(MPI_Comm_size(node, &session->local_size_), "MPI_Comm_size");
    MPI_Comm_free(&node);
    OPENMOE_RETURN_IF_ERROR(status);
  }
  return session;
}

MpiSession::~MpiSession() {
  int finalised = 0;
  MPI_Finalized(&finalised);
  if (initialised_mpi_ && !finalised) MPI_Finalize();
}

void AbortAll(const absl::Status& status) {
  const int rank = WorldRankOrMinusOne();
  std::fprintf(stderr, "rank %d: %s\n", rank < 0 ? 0 : rank, status.ToString().c_str());
  std::fflush(stderr);
  if (rank < 0) std::exit(1);  // no MPI job to end: this process is all of it
  MPI_Abort(MPI_COMM_WORLD, 1);  // mpirun kills every rank; MPI_Abort does not return
  std::_Exit(1);
}

}  // namespace openmoe::parallel
