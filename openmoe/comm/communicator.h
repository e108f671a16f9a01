// File: openmoe/comm/communicator.h
// The communicator interface the model talks to (expert all-to-all, data-parallel gradient
// reductions), below the model: openmoe/comm implements it for one rank (single_rank.h);
// //parallel implements it with MPI and NCCL and tools hand one to the model.
//
// Every op takes the execution-space instance it is ordered on (on CUDA, its stream): it starts
// after the work already enqueued there, later work there sees its result, and the host call may
// return before it completes (fence `space` before reading results on the host). Buffers live in
// ExecSpace's memory space and are contiguous. Ops come in two spellings: typed Views (checked at
// compile time against ExecSpace's memory space) and untyped `Buffer`s (pointer, count, dtype),
// which is what implementations see. Shapes below are in elements; `P` = size().
//
//   Communicator<Kokkos::Cuda>& comm = ...;
//   Matrix<bf16, Kokkos::Cuda> send("send", P, n), recv("recv", P, n);  // [P, n]
//   OPENMOE_RETURN_IF_ERROR(comm.AllToAll(space, send, recv));  // recv[p] = rank p's send[rank()]
//
// Validation (counts, dtypes, peers, overlap) happens here, before the implementation runs, so
// every implementation reports the same InvalidArgument messages (they name the op and counts).
#ifndef OPENMOE_COMM_COMMUNICATOR_H_
#define OPENMOE_COMM_COMMUNICATOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

#include <Kokkos_Core.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/status_macros.h"

namespace openmoe::comm {

enum class DType { kFloat32, kBf16, kF16, kInt32, kInt64 };
enum class ReduceOp { kSum, kMax };  // kMax: e.g. fp16 overflow flags

int64_t DTypeBytes(DType dtype);
const char* DTypeName(DType dtype);

template <class T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::kFloat32; };
template <> struct DTypeOf<bf16> { static constexpr DType value = DType::kBf16; };
template <> struct DTypeOf<f16> { static constexpr DType value = DType::kF16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::kInt32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::kInt64; };

// `count` elements of `dtype` at `data`, in the communicator's memory space.
struct Buffer {
  void* data;
  int64_t count;
  DType dtype;
};
struct ConstBuffer {
  const void* data;
  int64_t count;
  DType dtype;
  ConstBuffer(const void* d, int64_t c, DType t) : data(d), count(c), dtype(t) {}
  ConstBuffer(const Buffer& b) : data(b.data), count(b.count), dtype(b.dtype) {}  // NOLINT
};

// Checks shared by every implementation (communicator.cc): OkStatus or InvalidArgument naming
// the op and the counts. Counts >= 0, data non-null when count > 0, send and recv of one dtype.
namespace internal {
absl::Status CheckSameCount(const char* op, ConstBuffer send, ConstBuffer recv);  // may alias
absl::Status CheckReduceScatter(int size, ConstBuffer send, ConstBuffer recv);
absl::Status CheckAllGather(int size, ConstBuffer send, ConstBuffer recv);
absl::Status CheckAllToAll(int size, ConstBuffer send, ConstBuffer recv);
absl::Status CheckPointToPoint(const char* op, ConstBuffer buffer, int peer, int rank, int size);
absl::Status CheckRoot(int root, int size);
absl::Status CheckContiguous(const char* op, bool contiguous, const std::string& label);
}  // namespace internal

template <class ExecSpace>
class Communicator {
 public:
  using execution_space = ExecSpace;
  using memory_space = typename ExecSpace::memory_space;

  Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // in [0, size())
  virtual int size() const = 0;

  // recv[i] = op over ranks of send[i]; send, recv [n]. In place when send.data == recv.data.
  absl::Status AllReduce(const ExecSpace& space, ConstBuffer send, Buffer recv, ReduceOp op) {
    OPENMOE_RETURN_IF_ERROR(internal::CheckSameCount("AllReduce", send, recv));
    return DoAllReduce(space, send, recv, op);
  }
  // recv[i] = op over ranks of send[rank() * n + i]; send [P * n], recv [n].
  absl::Status ReduceScatter(const ExecSpace& space, ConstBuffer send, Buffer recv, ReduceOp op) {
    OPENMOE_RETURN_IF_ERROR(internal::CheckReduceScatter(size(), send, recv));
    return DoReduceScatter(space, send, recv, op);
  }
  // recv[p * n + i] = rank p's send[i]; send [n], recv [P * n].
  absl::Status AllGather(const ExecSpace& space, ConstBuffer send, Buffer recv) {
    OPENMOE_RETURN_IF_ERROR(internal::CheckAllGather(size(), send, recv));
    return DoAllGather(space, send, recv);
  }
  // recv[p * n + i] = rank p's send[rank() * n + i]; send, recv [P * n] (n elements per peer).
  absl::Status AllToAll(const ExecSpace& space, ConstBuffer send, Buffer recv) {
    OPENMOE_RETURN_IF_ERROR(internal::CheckAllToAll(size(), send, recv));
    return DoAllToAll(space, send, recv);
  }
  // Point to point: `peer` in [0, P) and != rank() (a message to oneself is a copy: use one).
  absl::Status Send(const ExecSpace& space, ConstBuffer send, int peer) {
    OPENMOE_RETURN_IF_ERROR(internal::CheckPointToPoint("Send", send, peer, rank(), size()));
    return DoSend(space, send, peer);
  }
  absl::Status Recv(const ExecSpace& space, Buffer recv, int peer) {
    OPENMOE_RETURN_IF_ERROR(internal::CheckPointToPoint("Recv", recv, peer, rank(), size()));
    return DoRecv(space, recv, peer);
  }
  // recv = root's send; send, recv [n]; send is read on the root only. In place when equal.
  absl::Status Broadcast(const ExecSpace& space, ConstBuffer send, Buffer recv, int root) {
    OPENMOE_RETURN_IF_ERROR(internal::CheckRoot(root, size()));
    OPENMOE_RETURN_IF_ERROR(internal::CheckSameCount("Broadcast", send, recv));
    return DoBroadcast(space, send, recv, root);
  }
  // Work enqueued on `space` after the barrier starts only once every rank has reached it.
  absl::Status Barrier(const ExecSpace& space) { return DoBarrier(space); }

  // Collective over this communicator (host-side, not stream-ordered): ranks with the same
  // color >= 0 form a new communicator, ordered by (key, rank) as MPI_Comm_split.
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) const {
    if (color < 0) {
      return absl::InvalidArgumentError("Split: color must be >= 0, got " + std::to_string(color));
    }
    return DoSplit(color, key);
  }

  // Typed spellings over contiguous Views in ExecSpace's memory space (any rank; counts are
  // View sizes). The in-place AllReduce / Broadcast take one View.
  template <class... S, class... R>
  absl::Status AllReduce(const ExecSpace& space, const Kokkos::View<S...>& send,
                         const Kokkos::View<R...>& recv, ReduceOp op = ReduceOp::kSum) {
    OPENMOE_RETURN_IF_ERROR(CheckView("AllReduce", send));
    OPENMOE_RETURN_IF_ERROR(CheckView("AllReduce", recv));
    return AllReduce(space, In(send), Out(recv), op);
  }
  template <class... V>
  absl::Status AllReduce(const ExecSpace& space, const Kokkos::View<V...>& data,
                         ReduceOp op = ReduceOp::kSum) {
    return AllReduce(space, data, data, op);
  }
  template <class... S, class... R>
  absl::Status ReduceScatter(const ExecSpace& space, const Kokkos::View<S...>& send,
                             const Kokkos::View<R...>& recv, ReduceOp op = ReduceOp::kSum) {
    OPENMOE_RETURN_IF_ERROR(CheckView("ReduceScatter", send));
    OPENMOE_RETURN_IF_ERROR(CheckView("ReduceScatter", recv));
    return ReduceScatter(space, In(send), Out(recv), op);
  }
  template <class... S, class... R>
  absl::Status AllGather(const ExecSpace& space, const Kokkos::View<S...>& send,
                         const Kokkos::View<R...>& recv) {
    OPENMOE_RETURN_IF_ERROR(CheckView("AllGather", send));
    OPENMOE_RETURN_IF_ERROR(CheckView("AllGather", recv));
    return AllGather(space, In(send), Out(recv));
  }
  template <class... S, class... R>
  absl::Status AllToAll(const ExecSpace& space, const Kokkos::View<S...>& send,
                        const Kokkos::View<R...>& recv) {
    OPENMOE_RETURN_IF_ERROR(CheckView("AllToAll", send));
    OPENMOE_RETURN_IF_ERROR(CheckView("AllToAll", recv));
    return AllToAll(space, In(send), Out(recv));
  }
  template <class... V>
  absl::Status Send(const ExecSpace& space, const Kokkos::View<V...>& send, int peer) {
    OPENMOE_RETURN_IF_ERROR(CheckView("Send", send));
    return Send(space, In(send), peer);
  }
  template <class... V>
  absl::Status Recv(const ExecSpace& space, const Kokkos::View<V...>& recv, int peer) {
    OPENMOE_RETURN_IF_ERROR(CheckView("Recv", recv));
    return Recv(space, Out(recv), peer);
  }
  template <class... V>
  absl::Status Broadcast(const ExecSpace& space, const Kokkos::View<V...>& data, int root) {
    OPENMOE_RETURN_IF_ERROR(CheckView("Broadcast", data));
    return Broadcast(space, In(data), Out(data), root);
  }

 protected:
  // Called with arguments already validated.
  virtual absl::Status DoAllReduce(const ExecSpace& space, ConstBuffer send, Buffer recv, ReduceOp op) = 0;
  virtual absl::Status DoReduceScatter(const ExecSpace& space, ConstBuffer send, Buffer recv,
                                       ReduceOp op) = 0;
  virtual absl::Status DoAllGather(const ExecSpace& space, ConstBuffer send, Buffer recv) = 0;
  virtual absl::Status DoAllToAll(const ExecSpace& space, ConstBuffer send, Buffer recv) = 0;
  virtual absl::Status DoSend(const ExecSpace& space, ConstBuffer send, int peer) = 0;
  virtual absl::Status DoRecv(const ExecSpace& space, Buffer recv, int peer) = 0;
  virtual absl::Status DoBroadcast(const ExecSpace& space, ConstBuffer send, Buffer recv, int root) = 0;
  virtual absl::Status DoBarrier(const ExecSpace& space) = 0;
  virtual absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) const = 0;

 private:
  template <class View>
  static absl::Status CheckView(const char* op, const View& v) {
    static_assert(std::is_same<typename View::memory_space, memory_space>::value,
                  "Communicator<ExecSpace>: the View must live in ExecSpace's memory space");
    static_assert(sizeof(DTypeOf<typename View::non_const_value_type>::value) > 0,
                  "element type: float, bf16, f16, int32_t or int64_t");
    return internal::CheckContiguous(op, v.span_is_contiguous(), v.label());
  }
  template <class View>
  static ConstBuffer In(const View& v) {
    return ConstBuffer(v.data(), int64_t(v.size()), DTypeOf<typename View::non_const_value_type>::value);
  }
  template <class View>
  static Buffer Out(const View& v) {
    static_assert(!std::is_const<typename View::value_type>::value, "a receive View must be writable");
    return Buffer{v.data(), int64_t(v.size()), DTypeOf<typename View::non_const_value_type>::value};
  }
};

}  // namespace openmoe::comm

#endif  // OPENMOE_COMM_COMMUNICATOR_H_
