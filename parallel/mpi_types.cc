// File: parallel/mpi_types.cc
#include "parallel/mpi_types.h"

#include <utility>

#include "openmoe/core/bf16.h"
#include "openmoe/core/status_macros.h"
#include "parallel/mpi_runtime.h"

namespace openmoe::parallel {
namespace {

// inout[i] = in[i] + inout[i], added in float and rounded once to T.
template <class T>
void HalfSum(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = T(float(a[i]) + float(b[i]));
}

// inout[i] = the larger of in[i] and inout[i] (its bits: no rounding).
template <class T>
void HalfMax(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) {
    if (float(a[i]) > float(b[i])) b[i] = a[i];
  }
}

int HalfIndex(comm::DType dtype) { return dtype == comm::DType::kBf16 ? 0 : 1; }
int OpIndex(comm::ReduceOp op) { return op == comm::ReduceOp::kSum ? 0 : 1; }

}  // namespace

void Bf16SumFunction(void* in, void* inout, int* len, MPI_Datatype* type) { HalfSum<bf16>(in, inout, len, type); }
void Bf16MaxFunction(void* in, void* inout, int* len, MPI_Datatype* type) { HalfMax<bf16>(in, inout, len, type); }
void F16SumFunction(void* in, void* inout, int* len, MPI_Datatype* type) { HalfSum<f16>(in, inout, len, type); }
void F16MaxFunction(void* in, void* inout, int* len, MPI_Datatype* type) { HalfMax<f16>(in, inout, len, type); }

MPI_Datatype MpiDatatype(comm::DType dtype) {
  switch (dtype) {
    case comm::DType::kFloat32: return MPI_FLOAT;
    case comm::DType::kBf16: return MPI_UINT16_T;
    case comm::DType::kF16: return MPI_UINT16_T;
    case comm::DType::kInt32: return MPI_INT32_T;
    case comm::DType::kInt64: return MPI_INT64_T;
  }
  return MPI_DATATYPE_NULL;
}

absl::StatusOr<MpiReduceOps> MpiReduceOps::Create() {
  MpiReduceOps ops;
  MPI_User_function* const functions[2][2] = {{Bf16SumFunction, Bf16MaxFunction},
                                              {F16SumFunction, F16MaxFunction}};
  for (int t = 0; t < 2; ++t) {
    for (int o = 0; o < 2; ++o) {
      OPENMOE_RETURN_IF_ERROR(MpiResult(MPI_Op_create(functions[t][o], /*commute=*/1, &ops.half_[t][o]),
                                        "MPI_Op_create"));
    }
  }
  return ops;
}

MpiReduceOps::MpiReduceOps(MpiReduceOps&& other) noexcept {
  for (int t = 0; t < 2; ++t)
    for (int o = 0; o < 2; ++o) std::swap(half_[t][o], other.half_[t][o]);
}

MpiReduceOps::~MpiReduceOps() {
  if (!MpiIsActive()) return;  // MPI finalised: its ops are gone with it
  for (auto& row : half_)
    for (MPI_Op& op : row)
      if (op != MPI_OP_NULL) MPI_Op_free(&op);
}

MPI_Op MpiReduceOps::Get(comm::DType dtype, comm::ReduceOp op) const {
  if (dtype == comm::DType::kBf16 || dtype == comm::DType::kF16) return half_[HalfIndex(dtype)][OpIndex(op)];
  return op == comm::ReduceOp::kSum ? MPI_SUM : MPI_MAX;
}

}  // namespace openmoe::parallel
