// File: parallel/comm_stream.h
// A second execution-space instance for communication, and events that order work between two
// instances, so that exchanges enqueued on the communication instance run while the compute
// instance works (CUDA: a stream of its own; NCCL is stream-ordered, comm::Communicator ops run on
// the instance they are given).
//
//   CommStream<Space> comm_stream;                                  // one per user, made lazily
//   OPENMOE_ASSIGN_OR_RETURN(Space comm, comm_stream.For(compute)); // CUDA: its own stream
//   StreamEvent<Space> ready;
//   OPENMOE_RETURN_IF_ERROR(ready.Record(comm));    // marks the work enqueued on comm so far
//   OPENMOE_RETURN_IF_ERROR(ready.Wait(compute));   // later work on compute starts after it
//
// Host spaces (Serial, OpenMP) run their kernels to completion before the call returns and the host
// communicators fence before each op: there the communication instance is the compute instance and
// events do nothing, so the same code runs in program order (the same results, no overlap).
//
// CUDA: the stream is created non-blocking (no implicit ordering with the legacy default stream:
// only the events order it) on the current device, on the first For(); the events are created
// without timing on their first Record. Destroy a CommStream before Kokkos::finalize (it owns a
// Kokkos::Cuda instance over its stream).
#ifndef OPENMOE_PARALLEL_COMM_STREAM_H_
#define OPENMOE_PARALLEL_COMM_STREAM_H_

#include <optional>
#include <string>

#include <Kokkos_Core.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace openmoe::parallel {

template <class ExecSpace>
class CommStream {
 public:
  absl::StatusOr<ExecSpace> For(const ExecSpace& compute) { return compute; }
};

template <class ExecSpace>
class StreamEvent {
 public:
  absl::Status Record(const ExecSpace&) { return absl::OkStatus(); }
  absl::Status Wait(const ExecSpace&) const { return absl::OkStatus(); }
};

#if defined(KOKKOS_ENABLE_CUDA)

namespace internal {
inline absl::Status CudaCall(cudaError_t result, const char* op) {
  if (result == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string(op) + " failed: " + cudaGetErrorString(result));
}
}  // namespace internal

template <>
class CommStream<Kokkos::Cuda> {
 public:
  CommStream() = default;
  CommStream(const CommStream&) = delete;
  CommStream& operator=(const CommStream&) = delete;
  ~CommStream() {
    if (stream_ == nullptr) return;
    cudaStreamSynchronize(stream_);
    space_.reset();  // the instance first: it refers to the stream
    cudaStreamDestroy(stream_);
  }

  absl::StatusOr<Kokkos::Cuda> For(const Kokkos::Cuda&) {
    if (!space_) {
      absl::Status made = internal::CudaCall(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                                             "cudaStreamCreateWithFlags");
      if (!made.ok()) {
        stream_ = nullptr;
        return made;
      }
      space_.emplace(stream_);
    }
    return *space_;
  }

 private:
  cudaStream_t stream_ = nullptr;
  std::optional<Kokkos::Cuda> space_;
};

template <>
class StreamEvent<Kokkos::Cuda> {
 public:
  StreamEvent() = default;
  StreamEvent(const StreamEvent&) = delete;
  StreamEvent& operator=(const StreamEvent&) = delete;
  ~StreamEvent() {
    if (event_ != nullptr) cudaEventDestroy(event_);  // released once the recorded work is done
  }

  absl::Status Record(const Kokkos::Cuda& space) {
    if (event_ == nullptr) {
      absl::Status made = internal::CudaCall(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming),
                                             "cudaEventCreateWithFlags");
      if (!made.ok()) {
        event_ = nullptr;
        return made;
      }
    }
    return internal::CudaCall(cudaEventRecord(event_, space.cuda_stream()), "cudaEventRecord");
  }
  absl::Status Wait(const Kokkos::Cuda& space) const {
    if (event_ == nullptr) return absl::FailedPreconditionError("StreamEvent::Wait before Record");
    return internal::CudaCall(cudaStreamWaitEvent(space.cuda_stream(), event_, 0), "cudaStreamWaitEvent");
  }

 private:
  cudaEvent_t event_ = nullptr;
};

#endif  // KOKKOS_ENABLE_CUDA

}  // namespace openmoe::parallel

#endif  // OPENMOE_PARALLEL_COMM_STREAM_H_
