// File: openmoe/comm/communicator.cc
// The argument checks every Communicator runs before its implementation (communicator.h).
#include "openmoe/comm/communicator.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace openmoe::comm {

int64_t DTypeBytes(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kBf16: return 2;
    case DType::kF16: return 2;
    case DType::kInt32: return 4;
    case DType::kInt64: return 8;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kBf16: return "bf16";
    case DType::kF16: return "f16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
  }
  return "unknown";
}

namespace internal {
namespace {

absl::Status CheckBuffer(const char* op, const char* what, ConstBuffer b) {
  if (b.count < 0) return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " has ", b.count, " elements"));
  if (b.count > 0 && b.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " has ", b.count, " elements but no data"));
  }
  return absl::OkStatus();
}

// Counts non-negative, data present, one dtype; out-of-place ops also need disjoint buffers.
absl::Status CheckPair(const char* op, ConstBuffer send, ConstBuffer recv, bool may_alias) {
  OPENMOE_RETURN_IF_ERROR(CheckBuffer(op, "send", send));
  OPENMOE_RETURN_IF_ERROR(CheckBuffer(op, "recv", recv));
  if (send.dtype != recv.dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": send is ", DTypeName(send.dtype), " and recv ", DTypeName(recv.dtype)));
  }
  const auto s = reinterpret_cast<uintptr_t>(send.data);
  const auto r = reinterpret_cast<uintptr_t>(recv.data);
  const int64_t bytes = DTypeBytes(send.dtype);
  const bool overlap = send.count > 0 && recv.count > 0 && s < r + recv.count * bytes && r < s + send.count * bytes;
  if (overlap && !(may_alias && s == r)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, may_alias ? ": send and recv overlap without being the same buffer"
                      : ": send and recv overlap; only AllReduce and Broadcast work in place"));
  }
  return absl::OkStatus();
}

absl::Status CountError(const char* op, ConstBuffer send, ConstBuffer recv, const std::string& rule) {
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": send has ", send.count, " elements and recv ", recv.count, "; ", rule));
}

}  // namespace

absl::Status CheckSameCount(const char* op, ConstBuffer send, ConstBuffer recv) {
  OPENMOE_RETURN_IF_ERROR(CheckPair(op, send, recv, /*may_alias=*/true));
  if (send.count != recv.count) return CountError(op, send, recv, "they must be equal");
  return absl::OkStatus();
}

absl::Status CheckReduceScatter(int size, ConstBuffer send, ConstBuffer recv) {
  OPENMOE_RETURN_IF_ERROR(CheckPair("ReduceScatter", send, recv, /*may_alias=*/false));
  if (send.count != recv.count * size) {
    return CountError("ReduceScatter", send, recv, absl::StrCat("send must be size (", size, ") x recv"));
  }
  return absl::OkStatus();
}

absl::Status CheckAllGather(int size, ConstBuffer send, ConstBuffer recv) {
  OPENMOE_RETURN_IF_ERROR(CheckPair("AllGather", send, recv, /*may_alias=*/false));
  if (recv.count != send.count * size) {
    return CountError("AllGather", send, recv, absl::StrCat("recv must be size (", size, ") x send"));
  }
  return absl::OkStatus();
}

absl::Status CheckAllToAll(int size, ConstBuffer send, ConstBuffer recv) {
  OPENMOE_RETURN_IF_ERROR(CheckPair("AllToAll", send, recv, /*may_alias=*/false));
  if (send.count != recv.count || send.count % size != 0) {
    return CountError("AllToAll", send, recv,
                      absl::StrCat("both must be size (", size, ") x n, n elements per peer"));
  }
  return absl::OkStatus();
}

absl::Status CheckPointToPoint(const char* op, ConstBuffer buffer, int peer, int rank, int size) {
  OPENMOE_RETURN_IF_ERROR(CheckBuffer(op, "buffer", buffer));
  if (peer < 0 || peer >= size || peer == rank) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": peer ", peer, " is not another rank (rank ", rank,
                                                   " of size ", size, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckRoot(int root, int size) {
  if (root < 0 || root >= size) {
    return absl::InvalidArgumentError(absl::StrCat("Broadcast: root ", root, " is not in [0, ", size, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckContiguous(const char* op, bool contiguous, const std::string& label) {
  if (!contiguous) return absl::InvalidArgumentError(absl::StrCat(op, ": View '", label, "' is not contiguous"));
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace openmoe::comm
