// File: openmoe/comm/single_rank.h
// The communicator of a run on one device: rank 0 of size 1. Every collective reduces to a
// stream-ordered copy of send into recv (nothing when they are the same buffer): AllReduce and
// Broadcast of one rank are the identity, ReduceScatter / AllGather / AllToAll of n elements give
// the same n. Send / Recv have no peer and fail (Communicator's check: peer 0 is oneself), as they
// do on every implementation: a message to oneself is a copy, which the caller should make.
// Barrier does nothing; Split gives another single-rank communicator.
//
//   SingleRankCommunicator<Kokkos::Cuda> comm;
//   OPENMOE_RETURN_IF_ERROR(comm.AllToAll(space, send, recv));  // send, recv [1, n]: recv = send
#ifndef OPENMOE_COMM_SINGLE_RANK_H_
#define OPENMOE_COMM_SINGLE_RANK_H_

#include <memory>

#include "openmoe/comm/communicator.h"

namespace openmoe::comm {

template <class ExecSpace>
class SingleRankCommunicator final : public Communicator<ExecSpace> {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }

 protected:
  absl::Status DoAllReduce(const ExecSpace& space, ConstBuffer send, Buffer recv, ReduceOp) override;
  absl::Status DoReduceScatter(const ExecSpace& space, ConstBuffer send, Buffer recv, ReduceOp) override;
  absl::Status DoAllGather(const ExecSpace& space, ConstBuffer send, Buffer recv) override;
  absl::Status DoAllToAll(const ExecSpace& space, ConstBuffer send, Buffer recv) override;
  absl::Status DoSend(const ExecSpace& space, ConstBuffer send, int peer) override;
  absl::Status DoRecv(const ExecSpace& space, Buffer recv, int peer) override;
  absl::Status DoBroadcast(const ExecSpace& space, ConstBuffer send, Buffer recv, int root) override;
  absl::Status DoBarrier(const ExecSpace& space) override;
  absl::StatusOr<std::unique_ptr<Communicator<ExecSpace>>> DoSplit(int color, int key) const override;
};

}  // namespace openmoe::comm

#endif  // OPENMOE_COMM_SINGLE_RANK_H_
