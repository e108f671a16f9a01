// File: parallel/mpi_types.h
// comm::DType and comm::ReduceOp as MPI datatypes and reduction ops.
//
// bf16 and f16 travel as MPI_UINT16_T (MPI has no bfloat16, and MPI_Alltoall & co. only move
// bytes). Reducing them needs MPI_Ops of our own (MpiReduceOps): each pairwise step converts both
// operands to float (openmoe/core/bf16.h, exact), adds or compares, and stores the sum rounded to
// nearest even. We chose that over reducing a float32 staging copy because it moves half the
// bytes and needs no extra buffer, and because it rounds the way NCCL's bf16/f16 reductions do
// (after every step), so MPI and NCCL runs agree in kind. The price: a sum over P ranks is rounded
// P - 1 times instead of once, so reduce gradients in float32 where that matters (the trainer's
// flat_grads are float32). Max keeps the larger operand's bits, so it is exact; NaN operands are
// compared as float compares them (as MPI_MAX does for MPI_FLOAT: a NaN may or may not survive).
#ifndef OPENMOE_PARALLEL_MPI_TYPES_H_
#define OPENMOE_PARALLEL_MPI_TYPES_H_

#include <mpi/mpi.h>

#include "absl/status/statusor.h"
#include "openmoe/comm/communicator.h"

namespace openmoe::parallel {

// MPI_FLOAT, MPI_UINT16_T (bf16, f16), MPI_INT32_T, MPI_INT64_T.
MPI_Datatype MpiDatatype(comm::DType dtype);

// The MPI_Op functions for 16-bit floats (MPI_User_function): inout[i] = in[i] op inout[i] for
// i < *len. Exposed for tests.
void Bf16SumFunction(void* in, void* inout, int* len, MPI_Datatype* type);
void Bf16MaxFunction(void* in, void* inout, int* len, MPI_Datatype* type);
void F16SumFunction(void* in, void* inout, int* len, MPI_Datatype* type);
void F16MaxFunction(void* in, void* inout, int* len, MPI_Datatype* type);

// The reduction ops of one communicator: MPI_SUM / MPI_MAX for float32 and the integers, our
// own (created here, freed by the destructor) for bf16 and f16. Needs MPI initialised.
class MpiReduceOps {
 public:
  static absl::StatusOr<MpiReduceOps> Create();
  MpiReduceOps(MpiReduceOps&& other) noexcept;
  MpiReduceOps& operator=(MpiReduceOps&& other) = delete;
  MpiReduceOps(const MpiReduceOps&) = delete;
  MpiReduceOps& operator=(const MpiReduceOps&) = delete;
  ~MpiReduceOps();

  MPI_Op Get(comm::DType dtype, comm::ReduceOp op) const;

 private:
  MpiReduceOps() = default;
  // [bf16, f16] x [sum, max]; MPI_OP_NULL where not created (yet, or moved from).
  MPI_Op half_[2][2] = {{MPI_OP_NULL, MPI_OP_NULL}, {MPI_OP_NULL, MPI_OP_NULL}};
};

}  // namespace openmoe::parallel

#endif  // OPENMOE_PARALLEL_MPI_TYPES_H_
